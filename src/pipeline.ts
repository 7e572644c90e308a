// The build pipeline: the model graph is sharded into one graph per tensor-parallel rank, every rank's
// graph goes through the passes (passes/index.ts, in order), and the fusion report is built from rank 0.
import { PASSES, runPasses, shardForTp } from "../passes/index.ts";
import type { BuildConfig } from "./engine/format.ts";
import type { Graph } from "./ir/types.ts";
import { buildReport, formatReport, type PassRecord, reportFiles } from "./report/index.ts";

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
