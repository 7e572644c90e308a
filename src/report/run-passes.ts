// Runs the pipeline's passes over one rank's graph, recording for the fusion report what each pass
// matched (through the ambient pass log of passes/pattern.ts), how long it took, and the op counts.
import { newPassLog, withPassLog } from "../../passes/pattern.ts";
import type { BuildConfig } from "../engine/format.ts";
import { printGraph } from "../ir/printer.ts";
import type { Graph } from "../ir/types.ts";
import type { Pass } from "../pipeline.ts";
import { isLaunch } from "./figures.ts";
import { compressScopes, type PassRecord } from "./report.ts";

const launches = (g: Graph) => g.nodes.filter((n) => isLaunch(n.op)).length;

export function runPasses(
  g: Graph,
  passes: Pass[],
  build: BuildConfig,
  o: { dumpAfter?: string[]; log?: (s: string) => void; records?: PassRecord[] } = {},
): Graph {
  for (const p of passes) {
    const log = newPassLog();
    const t0 = performance.now();
    const before = g;
    g = withPassLog(log, () => p.run(before, build));
    const patterns: Record<string, number> = {};
    for (const m of log.matches) patterns[m.pattern] = (patterns[m.pattern] ?? 0) + 1;
    o.records?.push({
      name: p.name,
      status: log.failed ? "failed" : log.matches.length ? "applied" : log.reports ? "no-match" : "ran",
      matches: log.reports || log.matches.length ? log.matches.length : null,
      patterns,
      where: compressScopes(log.matches.map((m) => m.where)),
      opsBefore: before.nodes.length,
      opsAfter: g.nodes.length,
      launchesBefore: launches(before),
      launchesAfter: launches(g),
      notes: log.notes,
      ms: Math.round((performance.now() - t0) * 10) / 10,
    });
    if (o.dumpAfter?.includes(p.name)) o.log?.(`--- IR after ${p.name} ---\n${printGraph(g)}`);
  }
  return g;
}
