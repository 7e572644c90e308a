// The build pipeline, declared in one place: graph passes in order, then sharding into ranks.
import type { BuildConfig } from "./engine/format.ts";
import { printGraph } from "./ir/printer.ts";
import type { Graph } from "./ir/types.ts";

export interface Pass {
  name: string;
  run(g: Graph, build: BuildConfig): Graph;
}

export const PASSES: Pass[] = [];

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
  let g = graph;
  const applied: string[] = [];
  for (const p of PASSES) {
    if (o.disable.includes(p.name)) continue;
    g = p.run(g, build);
    applied.push(p.name);
    if (o.dumpAfter.includes(p.name)) o.log?.(`--- IR after ${p.name} ---\n${printGraph(g)}`);
  }
  if (build.tp !== 1)
    throw new Error(`--tp ${build.tp}: tensor-parallel sharding is not available in this build`);
  return { ranks: [g], applied, extraFiles: {} };
}
