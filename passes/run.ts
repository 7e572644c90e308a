// Runs passes in order over one rank's graph, each with a fresh context (its own pass log), and
// records for the fusion report what each pass matched, how long it took and the op counts.
import type { BuildConfig } from "../src/engine/format.ts";
import { printGraph } from "../src/ir/printer.ts";
import type { Graph } from "../src/ir/types.ts";
import { isLaunch } from "../src/report/figures.ts";
import { compressScopes, type PassRecord } from "../src/report/report.ts";
import { type Pass, PassLog, passContext } from "./pass.ts";

const launches = (g: Graph) => g.nodes.filter((n) => isLaunch(n.op)).length;

export function runPasses(
  g: Graph,
  passes: readonly Pass[],
  build: BuildConfig,
  o: { dumpAfter?: string[]; log?: (s: string) => void; records?: PassRecord[] } = {},
): Graph {
  for (const p of passes) {
    const log = new PassLog();
    const t0 = performance.now();
    const before = g;
    g = p.run(before, passContext(build, log));
    o.records?.push(passRecord(p.name, log, before, g, performance.now() - t0));
    if (o.dumpAfter?.includes(p.name)) o.log?.(`--- IR after ${p.name} ---\n${printGraph(g)}`);
  }
  return g;
}

function passRecord(name: string, log: PassLog, before: Graph, after: Graph, ms: number): PassRecord {
  const patterns: Record<string, number> = {};
  for (const m of log.matches) patterns[m.pattern] = (patterns[m.pattern] ?? 0) + 1;
  return {
    name,
    status: log.failed ? "failed" : log.matches.length ? "applied" : log.reports ? "no-match" : "ran",
    matches: log.reports || log.matches.length ? log.matches.length : null,
    patterns,
    where: compressScopes(log.matches.map((m) => m.where)),
    opsBefore: before.nodes.length,
    opsAfter: after.nodes.length,
    launchesBefore: launches(before),
    launchesAfter: launches(after),
    notes: log.notes,
    ms: Math.round(ms * 10) / 10,
  };
}
