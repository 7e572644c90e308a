// The pass runner (passes/run.ts) with stand-in passes on a hand-built graph: order, a fresh context per
// pass, the records the fusion report reads (status, match counts per pattern, scopes, op and launch
// counts, notes, time) and the IR dumps.
import { afterEach, describe, expect, it, vi } from "vitest";
import type { Pass, PassLog } from "../../passes/pass.ts";
import { runPasses } from "../../passes/run.ts";
import { addNode } from "../../src/ir/builder.ts";
import { printGraph } from "../../src/ir/printer.ts";
import type { Graph } from "../../src/ir/types.ts";
import type { PassRecord } from "../../src/report/index.ts";
import { graphWithX } from "./hand-graphs.ts";
import { testBuild } from "./helpers.ts";

/** x → add(x, x) (→ mul(a, a) when `mul`). */
function chain(mul: boolean): Graph {
  const { g, x } = graphWithX();
  const [a] = addNode(g, "add", [x, x], {}, { scope: "m.l0" });
  g.outputs = { y: mul ? addNode(g, "mul", [a, a], {}, { scope: "m.l0" })[0] : a };
  return g;
}

const big = chain(true);
const small = chain(false);
const seen: { name: string; g: Graph; log: PassLog; build: unknown }[] = [];

/** A stand-in pass: records what it was given, edits its log, returns `out` (its input when absent). */
function pass(name: string, edit: (log: PassLog) => void, out?: Graph): Pass {
  return {
    name,
    run(g, ctx) {
      seen.push({ name, g, log: ctx.log, build: ctx.build });
      edit(ctx.log);
      return out ?? g;
    },
  };
}

const PASSES = [
  pass(
    "fuse",
    (log) => {
      log.match("p", "m.layers.0.a");
      log.match("q", "m.head");
      log.match("p", "m.layers.1.a");
      log.note("n1");
    },
    small,
  ),
  pass("idle", (log) => {
    log.reports = true;
    log.note("nothing here");
  }),
  pass("plain", () => {}),
  pass("broken", (log) => {
    log.reports = true;
    log.match("p", "m.x");
    log.failed = "gave up";
  }),
];

afterEach(() => {
  seen.length = 0;
  vi.restoreAllMocks();
});

describe("runPasses", () => {
  it("runs the passes in order, each on the last one's output with its own fresh log and the build", () => {
    const build = testBuild();
    expect(runPasses(big, PASSES, build)).toBe(small);
    expect(seen.map((s) => s.name)).toEqual(["fuse", "idle", "plain", "broken"]);
    expect(seen.map((s) => s.g)).toEqual([big, small, small, small]);
    expect(seen.every((s) => s.build === build)).toBe(true);
    expect(new Set(seen.map((s) => s.log)).size).toBe(4);
    expect(seen[2].log.matches).toEqual([]);
  });

  it("records per pass: status, matches per pattern, compressed scopes, op and launch counts, notes, ms", () => {
    // Each pass takes 0.63 ms by this clock: recorded to a tenth of a millisecond.
    let t = 100;
    vi.spyOn(performance, "now").mockImplementation(() => (t += 0.63));
    const records: PassRecord[] = [];
    runPasses(big, PASSES, testBuild(), { records });
    const same = { opsBefore: 1, opsAfter: 1, launchesBefore: 1, launchesAfter: 1, ms: 0.6 };
    expect(records).toEqual([
      {
        name: "fuse",
        status: "applied",
        matches: 3,
        patterns: { p: 2, q: 1 },
        where: ["m.layers.{0..1}.a", "m.head"],
        opsBefore: 2,
        opsAfter: 1,
        launchesBefore: 2,
        launchesAfter: 1,
        notes: ["n1"],
        ms: 0.6,
      },
      {
        name: "idle",
        status: "no-match",
        matches: 0,
        patterns: {},
        where: [],
        notes: ["nothing here"],
        ...same,
      },
      { name: "plain", status: "ran", matches: null, patterns: {}, where: [], notes: [], ...same },
      {
        name: "broken",
        status: "failed",
        matches: 1,
        patterns: { p: 1 },
        where: ["m.x"],
        notes: [],
        ...same,
      },
    ]);
  });

  it("dumps the IR after the passes named in dumpAfter, and only those", () => {
    const lines: string[] = [];
    runPasses(big, PASSES, testBuild(), { dumpAfter: ["fuse", "plain"], log: (s) => lines.push(s) });
    expect(lines).toEqual([
      `--- IR after fuse ---\n${printGraph(small)}`,
      `--- IR after plain ---\n${printGraph(small)}`,
    ]);
    // dumpAfter without a log prints nothing and does not throw.
    expect(runPasses(big, PASSES, testBuild(), { dumpAfter: ["fuse"] })).toBe(small);
  });
});
