import { describe, expect, it } from "vitest";
import { passContext } from "../../passes/pass.ts";
import { qkvFusion } from "../../passes/qkv-fusion.ts";
import { shardForTp } from "../../passes/tensor-parallel.ts";
import type { Graph } from "../../src/ir/types.ts";
import { around, itKeepsLogits } from "./equivalence.ts";
import { fixture, goldenLogits, layerNodes, maxAbsDiff, opCounts, testBuild } from "./helpers.ts";

function fusedWeights(g: Graph) {
  return [...g.values.values()].filter((v) => v.name.includes("qkv_proj") && v.kind === "weight");
}

describe("qkv-fusion", () => {
  itKeepsLogits("qkv-fusion", { llama: 2, gptj: 2 }); // one per layer

  it("tiny-llama: one GEMM over [q; k; v] per layer, then a split (GQA widths 128 | 64 | 64)", async () => {
    const { before, after, log } = await around("qkv-fusion", "llama");
    expect(log.matches.map((m) => m.where)).toEqual(["model.layers.0.self_attn", "model.layers.1.self_attn"]);
    expect(opCounts(before).linear - opCounts(after).linear).toBe(4); // 3 → 1 per layer
    expect(opCounts(after).split).toBe(2);
    const l0 = layerNodes(after, 0).map((n) => n.op);
    expect(l0.slice(0, 3)).toEqual(["rms_norm", "linear", "split"]);
    const split = after.nodes.find((n) => n.op === "split")!;
    expect(split.attrs.sizes).toEqual([128, 64, 64]);
    const names = [...after.values.values()].filter((v) => v.kind === "weight").map((v) => v.name);
    for (const n of after.nodes)
      for (const id of n.inputs) {
        const v = id === null ? undefined : after.values.get(id);
        expect(v?.name ?? "").not.toMatch(/\.(q|k|v)_proj\.weight$/);
      }
    expect(names).toContain("model.layers.0.self_attn.qkv_proj.weight");
    const w = fusedWeights(after).find((v) => v.name === "model.layers.1.self_attn.qkv_proj.weight")!;
    expect(w.shape).toEqual([256, 128]);
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.name)).toEqual([
      "model.layers.1.self_attn.q_proj.weight",
      "model.layers.1.self_attn.k_proj.weight",
      "model.layers.1.self_attn.v_proj.weight",
    ]);
  });

  it("tiny-gptj: the three 128-wide projections fuse into a 384-wide GEMM", async () => {
    const { after, log } = await around("qkv-fusion", "gptj");
    expect(log.matches).toHaveLength(2);
    expect(after.nodes.find((n) => n.op === "split")!.attrs.sizes).toEqual([128, 128, 128]);
    const w = fusedWeights(after)[0];
    expect(w.name).toBe("transformer.h.0.attn.qkv_proj.weight");
    expect(w.shape).toEqual([384, 128]);
  });

  it("the input graph is not modified", async () => {
    const f = await fixture("llama");
    const ops = f.graph.nodes.map((n) => n.op).join();
    const values = f.graph.values.size;
    qkvFusion.run(f.graph, passContext(f.build));
    expect(f.graph.nodes.map((n) => n.op).join()).toBe(ops);
    expect(f.graph.values.size).toBe(values);
  });

  it("tensor-parallel ranks: fused parts keep each rank's slice, and the ranks' logits are unchanged", async () => {
    const f = await fixture("llama");
    const build = testBuild({ tp: 2 });
    const ranks = shardForTp(f.graph, build);
    const fused = ranks.map((g) => qkvFusion.run(g, passContext(build)));
    const w = fusedWeights(fused[1])[0];
    // Rank 1 of 2: query heads 2..3 (rows 64..128 of q_proj), KV head 1 (rows 32..64 of k/v_proj).
    expect(w.shape).toEqual([128, 128]);
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.transforms)).toEqual([
      [{ op: "slice", axis: 0, start: 64, end: 128 }],
      [{ op: "slice", axis: 0, start: 32, end: 64 }],
      [{ op: "slice", axis: 0, start: 32, end: 64 }],
    ]);
    expect(
      maxAbsDiff(goldenLogits(f, ranks, 2, build), goldenLogits(f, fused, 2, build)),
    ).toBeLessThanOrEqual(1e-5);
  });
});
