import { describe, expect, it } from "vitest";
import { around, itKeepsLogits } from "./equivalence.ts";
import { goldenLogits, maxAbsDiff, opCounts, runPasses, variantFixture } from "./helpers.ts";

describe("gate-up-fusion", () => {
  itKeepsLogits("gate-up-fusion", {
    llama: 2, // one per layer
    gptj: { none: "GPT-J's MLP is fc_in → gelu → fc_out, with no gate" },
  });

  it("tiny-llama: SwiGLU becomes one GEMM over [gate; up] and a gated_act(silu)", async () => {
    const { before, after, log } = await around("gate-up-fusion", "llama");
    expect(log.matches.map((m) => m.where)).toEqual(["model.layers.0.mlp", "model.layers.1.mlp"]);
    expect(opCounts(after).silu ?? 0).toBe(0);
    expect(opCounts(after).mul ?? 0).toBe(0);
    expect(opCounts(after).gated_act).toBe(2);
    expect(opCounts(before).linear - opCounts(after).linear).toBe(2);
    const ga = after.nodes.filter((n) => n.op === "gated_act");
    expect(ga.map((n) => n.attrs.activation)).toEqual(["silu", "silu"]);
    const w = after.values.get(after.nodes.find((n) => n.outputs[0] === ga[0].inputs[0])!.inputs[1]!)!;
    expect(w.name).toBe("model.layers.0.mlp.gate_up_proj.weight");
    expect(w.shape).toEqual([704, 128]);
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.name)).toEqual([
      "model.layers.0.mlp.gate_proj.weight",
      "model.layers.0.mlp.up_proj.weight",
    ]);
  });

  it("tiny-gptj: no gated MLP, graph unchanged and the report says why", async () => {
    const { before, after, log } = await around("gate-up-fusion", "gptj");
    expect(log.matches).toHaveLength(0);
    expect(opCounts(after)).toEqual(opCounts(before));
    expect(log.notes.join()).toMatch(/no gated MLP/);
  });

  it("GeGLU (gelu-tanh gate) fuses into gated_act(gelu_tanh) with the same logits", async () => {
    const f = await variantFixture("geglu");
    const before = runPasses(f.graph, ["qkv-fusion"]).graph;
    const { graph: after, logs } = runPasses(before, ["gate-up-fusion"]);
    expect(logs["gate-up-fusion"].matches).toHaveLength(2);
    expect(after.nodes.filter((n) => n.op === "gated_act").map((n) => n.attrs.activation)).toEqual([
      "gelu_tanh",
      "gelu_tanh",
    ]);
    expect(opCounts(after).gelu ?? 0).toBe(0);
    expect(maxAbsDiff(goldenLogits(f, before), goldenLogits(f, after))).toBeLessThanOrEqual(1e-5);
  });
});
