// buildReport and compressScopes (src/report/report.ts) on their own: the records of passes that did not run,
// the arena figures with and without a memory plan, the model and build copied into report.json, and the
// scope compression of the passes' "where" column, each expected value worked out from the inputs.
import { describe, expect, it } from "vitest";
import { PASSES, runPasses as runReported } from "../passes/index.ts";
import { naiveArena } from "../src/engine/arena.ts";
import { buildReport, compressScopes, FusionReport, type PassRecord } from "../src/report/report.ts";
import { fixture } from "./passes/helpers.ts";

describe("buildReport", () => {
  it("passes not run are recorded as disabled, with a note only for --disable-pass; an unplanned arena is the naive one", async () => {
    const f = await fixture("llama");
    const ran: PassRecord = {
      name: "cse",
      status: "no-match",
      matches: 0,
      patterns: { x: 0 },
      where: [],
      opsBefore: 7,
      opsAfter: 7,
      launchesBefore: 7,
      launchesAfter: 7,
      notes: ["n"],
      ms: 1,
    };
    const r = buildReport({
      before: f.graph,
      after: f.graph,
      build: { ...f.build, tp: 1, quant: "none", max_batch_size: 3, max_seq_len: 64, max_num_tokens: 32 },
      records: [ran],
      passes: ["qkv-fusion", "cse", "dce"],
      disabled: ["qkv-fusion"],
    });
    const off = (name: string, notes: string[]): PassRecord => ({
      name,
      status: "disabled",
      matches: null,
      patterns: {},
      where: [],
      opsBefore: 0,
      opsAfter: 0,
      launchesBefore: 0,
      launchesAfter: 0,
      notes,
      ms: 0,
    });
    expect(r.passes).toEqual([off("qkv-fusion", ["disabled (--disable-pass)"]), ran, off("dce", [])]);
    // tiny-llama's config: 2 layers, 2 kv heads of head_dim 32; the build as given.
    expect(r.model).toEqual({ numLayers: 2, numKvHeads: 2, headDim: 32 });
    expect(r.build).toEqual({
      sm: 90,
      tp: 1,
      dtype: "fp32",
      quant: "none",
      max_batch_size: 3,
      max_seq_len: 64,
      max_num_tokens: 32,
    });
    // Nothing ran: the same graph before and after, nothing saved, no memory plan.
    expect([r.savedBytesPerToken, r.savedLayerBytesPerToken]).toEqual([0, 0]);
    const naive = naiveArena(f.graph).bytes;
    expect(r.arena).toEqual({ planned: false, bytes: naive, naiveBytes: naive, unfusedNaiveBytes: naive });
    expect(r.drawing.after).toEqual(r.drawing.before);
    expect(FusionReport.parse(JSON.parse(JSON.stringify(r)))).toEqual(r);
  });

  it("after every pass: the memory plan's arena, the saved traffic as before − after", async () => {
    const f = await fixture("llama");
    const records: PassRecord[] = [];
    const after = runReported(f.graph, PASSES, f.build, { records });
    const r = buildReport({
      before: f.graph,
      after,
      build: f.build,
      records,
      passes: PASSES.map((p) => p.name),
      disabled: [],
    });
    expect(r.passes).toEqual(records);
    expect(r.arena.planned).toBe(true);
    expect(r.arena.bytes).toBe(after.meta.arena!.bytes);
    expect(r.arena.naiveBytes).toBe(naiveArena(after).bytes);
    expect(r.arena.unfusedNaiveBytes).toBe(naiveArena(f.graph).bytes);
    expect(r.arena.bytes).toBeLessThan(r.arena.naiveBytes);
    expect(r.savedBytesPerToken).toBe(r.before.trafficPerToken - r.after.trafficPerToken);
    expect(r.savedLayerBytesPerToken).toBe(r.before.layerTrafficPerToken - r.after.layerTrafficPerToken);
    expect(r.savedLayerBytesPerToken).toBeGreaterThan(0);
  });
});

describe("compressScopes", () => {
  const layers = (n: number, post: string) => Array.from({ length: n }, (_, i) => `model.layers.${i}${post}`);

  it("one entry per scope pattern, the layer numbers as a range, in first-seen order", () => {
    expect(compressScopes(layers(32, ".mlp"))).toEqual(["model.layers.{0..31}.mlp"]);
    expect(compressScopes([...layers(2, ".mlp"), "lm_head", ...layers(2, ".self_attn")])).toEqual([
      "model.layers.{0..1}.mlp",
      "lm_head",
      "model.layers.{0..1}.self_attn",
    ]);
    // A number at the end of the scope is a layer number too.
    expect(compressScopes(["transformer.h.0", "transformer.h.1", "transformer.h.2"])).toEqual([
      "transformer.h.{0..2}",
    ]);
  });

  it("a single layer is written plainly; gaps are listed; numbers sort as numbers and repeat once", () => {
    expect(compressScopes(["model.layers.5.mlp"])).toEqual(["model.layers.5.mlp"]);
    expect(compressScopes(["model.layers.3.mlp", "model.layers.3.mlp"])).toEqual(["model.layers.3.mlp"]);
    expect(compressScopes(["a.0.x", "a.2.x", "a.3.x"])).toEqual(["a.{0,2,3}.x"]);
    expect(compressScopes(["a.10.x", "a.9.x", "a.8.x"])).toEqual(["a.{8..10}.x"]);
    expect(compressScopes(["a.2.x", "a.1.x", "a.1.x", "a.0.x"])).toEqual(["a.{0..2}.x"]);
    expect(compressScopes(["a.10.x", "a.2.x"])).toEqual(["a.{2,10}.x"]);
  });

  it("the first number groups: experts of one layer stay apart", () => {
    expect(compressScopes(["m.layers.0.experts.1", "m.layers.1.experts.1", "m.layers.0.experts.2"])).toEqual([
      "m.layers.{0..1}.experts.1",
      "m.layers.0.experts.2",
    ]);
  });

  it("at most max entries, then how many more", () => {
    const six = ["a", "b", "c", "d", "e", "f"];
    expect(compressScopes(six)).toEqual(six);
    expect(compressScopes([...six, "g"])).toEqual([...six, "… 1 more"]);
    expect(compressScopes([...six, "g", ...layers(3, ".mlp")], 2)).toEqual(["a", "b", "… 6 more"]);
  });
});
