// The pass log and context (passes/pass.ts): what a fresh log holds, what note() deduplicates, and the
// context handed to a pass.
import { describe, expect, it } from "vitest";
import { PassLog, passContext } from "../../passes/pass.ts";
import { testBuild } from "./helpers.ts";

describe("PassLog", () => {
  it("starts empty: no matches, no notes, not reporting, not failed", () => {
    const log = new PassLog();
    expect(log.matches).toEqual([]);
    expect(log.notes).toEqual([]);
    expect(log.reports).toBe(false);
    expect(log.failed).toBeUndefined();
  });

  it("note() keeps each line once, in first-seen order; match() records every match", () => {
    const log = new PassLog();
    for (const msg of ["b", "a", "b"]) log.note(msg);
    log.match("p", "m.l0");
    log.match("p", "m.l0");
    expect(log.notes).toEqual(["b", "a"]);
    expect(log.matches).toEqual([
      { pattern: "p", where: "m.l0" },
      { pattern: "p", where: "m.l0" },
    ]);
  });
});

describe("passContext", () => {
  it("carries the build and the given log, or a fresh log of its own", () => {
    const build = testBuild();
    const log = new PassLog();
    expect(passContext(build, log)).toEqual({ build, log });
    expect(passContext(build, log).log).toBe(log);
    const own = passContext(build);
    expect(own.build).toBe(build);
    expect(own.log).toBeInstanceOf(PassLog);
    expect(own.log).not.toBe(passContext(build).log);
  });
});
