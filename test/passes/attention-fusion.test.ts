import { describe, expect, it } from "vitest";
import { around, itKeepsLogits } from "./equivalence.ts";
import { fixture, opCounts, runPasses } from "./helpers.ts";

describe("attention-fusion", () => {
  itKeepsLogits("attention-fusion", { llama: 2, gptj: 2 }); // one per layer

  it("tiny-llama: split + rope + attention → fused_attention on the packed qkv (neox, full rotary)", async () => {
    const { after, log } = await around("attention-fusion", "llama");
    expect(log.matches.map((m) => m.where)).toEqual(["model.layers.0.self_attn", "model.layers.1.self_attn"]);
    const c = opCounts(after);
    expect([c.rope, c.split, c.attention]).toEqual([undefined, undefined, undefined]);
    const fa = after.nodes.filter((n) => n.op === "fused_attention");
    expect(fa.map((n) => n.attrs)).toEqual(
      [0, 1].map((layer) => ({
        layer,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 32,
        scale: 1 / Math.sqrt(32),
        rotary_dim: 32,
        rope_style: "neox",
      })),
    );
    // It reads the qkv GEMM's output directly, the step's positions and the rope table.
    const qkv = after.nodes.find((n) => n.outputs[0] === fa[0].inputs[0])!;
    expect(qkv.op).toBe("linear");
    expect(after.values.get(qkv.inputs[1]!)!.name).toBe("model.layers.0.self_attn.qkv_proj.weight");
    expect(fa[0].inputs[1]).toBe(after.inputs.positions);
    expect(after.values.get(fa[0].inputs[2]!)!.name).toMatch(/^rope\.inv_freq/);
  });

  it("tiny-gptj: interleaved partial rotary (16 of 32 dims)", async () => {
    const { after } = await around("attention-fusion", "gptj");
    const fa = after.nodes.filter((n) => n.op === "fused_attention");
    expect(fa).toHaveLength(2);
    expect(fa.map((n) => [n.attrs.rope_style, n.attrs.rotary_dim, n.attrs.head_dim])).toEqual([
      ["gptj", 16, 32],
      ["gptj", 16, 32],
    ]);
    expect(opCounts(after).rope).toBeUndefined();
  });

  it("without qkv-fusion there is nothing packed to fuse: graph unchanged, noted", async () => {
    const f = await fixture("llama");
    const { graph, logs } = runPasses(f.graph, ["attention-fusion"]);
    expect(logs["attention-fusion"].matches).toHaveLength(0);
    expect(opCounts(graph)).toEqual(opCounts(f.graph));
    expect(logs["attention-fusion"].notes.join()).toMatch(/not one packed QKV/);
  });
});
