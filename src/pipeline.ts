// The build pipeline, declared in one place: the model graph is sharded into one graph per
// tensor-parallel rank, then every rank's graph goes through the same passes in order.
import { addNormFusion } from "../passes/add-norm-fusion.ts";
import { attentionFusion } from "../passes/attention-fusion.ts";
import { cse } from "../passes/cse.ts";
import { dce } from "../passes/dce.ts";
import { epilogueFusion } from "../passes/epilogue-fusion.ts";
import { gateUpFusion } from "../passes/gate-up-fusion.ts";
import { memoryPlan } from "../passes/memory-plan.ts";
import { qkvFusion } from "../passes/qkv-fusion.ts";
import { quantizeKvCache } from "../passes/quantize-kv.ts";
import { quantizeWeights } from "../passes/quantize-weights.ts";
import { shardForTp } from "../passes/tensor-parallel.ts";
import type { BuildConfig } from "./engine/format.ts";
import type { Graph } from "./ir/types.ts";
import { buildReport, formatReport, type PassRecord, reportFiles, runPasses } from "./report/index.ts";

export interface Pass {
  name: string;
  /** Graph → Graph; must not mutate its input. */
  run(g: Graph, build: BuildConfig): Graph;
}

/** Graph passes in the order they run on each rank's graph. */
export const PASSES: Pass[] = [
  qkvFusion,
  gateUpFusion,
  attentionFusion,
  epilogueFusion,
  addNormFusion,
  cse,
  dce,
  memoryPlan, // last: offsets are only valid for the graph it planned
];

/** Inserts passes before the one named `before` (at the end when there is none). */
function insertBefore(passes: Pass[], before: string, add: Pass[]): void {
  const i = passes.findIndex((p) => p.name === before);
  passes.splice(i < 0 ? passes.length : i, 0, ...add);
}

// Quantisation: after fusion (fused QKV / gate-up weights are quantised whole), before memory planning.
insertBefore(PASSES, "memory-plan", [
  { name: "quantize-weights", run: quantizeWeights },
  { name: "quantize-kv", run: quantizeKvCache },
]);

export interface PipelineResult {
  ranks: Graph[];
  applied: string[];
  extraFiles: Record<string, string>;
  /** Text summary for the terminal (the fusion report). */
  summary?: string;
}

export function runPipeline(
  graph: Graph,
  build: BuildConfig,
  o: { disable: string[]; dumpAfter: string[]; log?: (s: string) => void },
): PipelineResult {
  const known = new Set(PASSES.map((p) => p.name));
  for (const n of [...o.disable, ...o.dumpAfter])
    if (!known.has(n)) throw new Error(`unknown pass "${n}" (passes: ${[...known].join(", ") || "none"})`);
  const applied = PASSES.filter((p) => !o.disable.includes(p.name));
  // The fusion report follows rank 0 (every rank has the same structure).
  const records: PassRecord[] = [];
  const sharded = shardForTp(graph, build);
  const ranks = sharded.map((g, rank) =>
    runPasses(g, applied, build, rank === 0 ? { dumpAfter: o.dumpAfter, log: o.log, records } : {}),
  );
  const report = buildReport({
    before: sharded[0],
    after: ranks[0],
    build,
    records,
    passes: PASSES.map((p) => p.name),
    disabled: o.disable,
  });
  return {
    ranks,
    applied: applied.map((p) => p.name),
    extraFiles: reportFiles(report),
    summary: formatReport(report),
  };
}
