// shardForTp on the model graph: rank graphs share one node list; collectives where they belong;
// slices are per-part recipe transforms (so fusion concatenates each rank's slices).
import { describe, expect, it } from "vitest";
import { shardForTp } from "../../passes/tensor-parallel.ts";
import { verifyGraph } from "../../src/ir/verify.ts";
import { tinyLlamaBuild, tinyLlamaGraph } from "../fixtures.ts";

describe("shardForTp", () => {
  it("gives every rank the same node list, with collectives after row-parallel, embedding and lm_head", async () => {
    const g = await tinyLlamaGraph();
    const ranks = shardForTp(g, tinyLlamaBuild({ tp: 4 }));
    expect(ranks.length).toBe(4);
    const ops = (r: (typeof ranks)[number]) => r.nodes.map((n) => `${n.op}:${n.outputs.join(",")}`);
    for (const r of ranks) {
      verifyGraph(r);
      expect(ops(r)).toEqual(ops(ranks[0]));
    }
    const seq = ranks[0].nodes.map((n) => n.op);
    expect(seq.filter((o) => o === "all_reduce").length).toBe(1 + 2 * 2); // embedding + (o_proj, down) × 2 layers
    expect(seq.filter((o) => o === "all_gather").length).toBe(1);
    expect(seq[seq.indexOf("embedding") + 1]).toBe("all_reduce");
    expect(seq.at(-1)).toBe("all_gather");
    expect(ranks.map((r) => r.nodes.find((n) => n.op === "embedding")!.attrs.vocab_start)).toEqual([
      0, 128, 256, 384,
    ]);
    // 4 query heads, 2 KV heads at tp 4: one of each per rank, KV head ⌊r/2⌋.
    const attn = ranks.map((r) => r.nodes.find((n) => n.op === "attention")!.attrs);
    expect(attn.map((a) => [a.num_heads, a.num_kv_heads])).toEqual(Array(4).fill([1, 1]));
    const kSlices = ranks.map((r) => {
      const k = [...r.values.values()].find((v) => v.name === "model.layers.0.self_attn.k_proj.weight")!;
      return k.recipe?.kind === "checkpoint" ? k.recipe.parts[0].transforms : [];
    });
    expect(kSlices.map((t) => (t[0] as { start: number }).start)).toEqual([0, 0, 32, 32]);
    expect(ranks[0].meta.numKvHeads).toBe(1);
  });

  it("does not touch the model graph (tp 1 is the identity)", async () => {
    const g = await tinyLlamaGraph();
    const before = JSON.stringify([...g.values.values()]);
    shardForTp(g, tinyLlamaBuild({ tp: 2 }));
    expect(JSON.stringify([...g.values.values()])).toBe(before);
    expect(shardForTp(g, tinyLlamaBuild({ tp: 1 }))[0]).toBe(g);
  });
});
