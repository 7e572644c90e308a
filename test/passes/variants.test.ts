// A model the passes cannot fully fuse (tests/passes/models/variants.ts "unusual"): the build must not
// crash, what can fuse fuses, what cannot is left correct and explained in the report notes.
import { describe, expect, it } from "vitest";
import { PASSES, runPasses as runReported } from "../../passes/index.ts";
import { buildReport, type PassRecord } from "../../src/report/index.ts";
import { goldenLogits, maxAbsDiff, opCounts, variantFixture } from "./helpers.ts";

describe("an unusual model", () => {
  it("every pass runs, logits are unchanged, and the report explains what did not fuse", async () => {
    const f = await variantFixture("unusual");
    const records: PassRecord[] = [];
    const after = runReported(f.graph, PASSES, f.build, { records });
    expect(maxAbsDiff(goldenLogits(f, f.graph), goldenLogits(f, after))).toBeLessThanOrEqual(1e-5);
    expect(records.every((r) => r.status !== "failed")).toBe(true);
    const notes = (name: string) => records.find((r) => r.name === name)!.notes.join("\n");
    expect(notes("qkv-fusion")).toMatch(/layer 0: q\/k\/v project different inputs/);
    expect(notes("gate-up-fusion")).toMatch(/exact-erf gelu/);
    expect(notes("attention-fusion")).toMatch(/layer 0: q\/k\/v are not one packed QKV output/);
    // Layer 1 has no rope: its QKV fuses and its attention fuses with rotary_dim 0.
    const fa = after.nodes.filter((n) => n.op === "fused_attention");
    expect(fa.map((n) => [n.attrs.layer, n.attrs.rotary_dim])).toEqual([[1, 0]]);
    expect(opCounts(after).attention).toBe(1);
    const report = buildReport({
      before: f.graph,
      after,
      build: f.build,
      records,
      passes: PASSES.map((p) => p.name),
      disabled: [],
    });
    expect(report.after.launchesPerLayer).toBeLessThan(report.before.launchesPerLayer);
  });
});
