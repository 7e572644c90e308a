import { describe, expect, it } from "vitest";
import { shardForTp } from "../../passes/tensor-parallel.ts";
import { around, itKeepsLogits } from "./equivalence.ts";
import {
  fixture,
  goldenLogits,
  maxAbsDiff,
  opCounts,
  passesBefore,
  runPasses,
  testBuild,
} from "./helpers.ts";

describe("add-norm-fusion", () => {
  // In the pipeline epilogue-fusion runs first and takes the residual adds into GEMMs, so on one rank
  // this pass finds nothing; with epilogue-fusion skipped it fuses every add that feeds a norm.
  const none = { none: "epilogue-fusion took every residual add into a GEMM" };
  itKeepsLogits("add-norm-fusion", { llama: none, gptj: none });
  itKeepsLogits("add-norm-fusion", { llama: 4, gptj: 2 }, ["epilogue-fusion"]);

  it("after epilogue-fusion (one rank): nothing to fuse, graph unchanged, noted", async () => {
    const { before, after, log } = await around("add-norm-fusion", "llama");
    expect(log.matches).toHaveLength(0);
    expect(opCounts(after)).toEqual(opCounts(before));
    expect(log.notes.join()).toMatch(/no residual add feeds a norm/);
  });

  it("tiny-llama without epilogue-fusion: every add + rms_norm → add_rms_norm (normed, sum)", async () => {
    const { after, log } = await around("add-norm-fusion", "llama", ["epilogue-fusion"]);
    expect(log.matches.map((m) => m.where)).toEqual([
      "model.layers.0.post_attention_layernorm",
      "model.layers.1.input_layernorm",
      "model.layers.1.post_attention_layernorm",
      "model.norm",
    ]);
    const c = opCounts(after);
    expect([c.add_rms_norm, c.rms_norm, c.add]).toEqual([4, 1, undefined]);
    // The sum (residual stream) feeds the next add_rms_norm as its residual input.
    const an = after.nodes.filter((n) => n.op === "add_rms_norm");
    expect(an[1].inputs).toContain(an[0].outputs[1]);
  });

  it("tiny-gptj without epilogue-fusion: the one LayerNorm still feeds both attention and MLP", async () => {
    const { after } = await around("add-norm-fusion", "gptj", ["epilogue-fusion"]);
    const c = opCounts(after);
    // ln_1 of layer 1 and ln_f take the outer add; the inner add (attn_out + mlp_out) stays.
    expect([c.add_layer_norm, c.layer_norm, c.add]).toEqual([2, 1, 2]);
    const aln = after.nodes.find((n) => n.op === "add_layer_norm")!;
    const readers = after.nodes.filter((n) => n.inputs.includes(aln.outputs[0]));
    expect(readers.map((n) => after.values.get(n.inputs[1]!)!.name)).toEqual([
      "transformer.h.1.attn.qkv_proj.weight",
      "transformer.h.1.mlp.fc_in.weight",
    ]);
    // The sum is layer 1's residual: the add before ln_f (itself fused) reads it.
    const sumReaders = after.nodes.filter((n) => n.inputs.includes(aln.outputs[1]));
    expect(sumReaders.map((n) => [n.op, n.scope])).toEqual([["add_layer_norm", "transformer.ln_f"]]);
  });

  it("tensor parallel: adds after all_reduce (no GEMM to take them) fuse in the full pipeline order", async () => {
    const f = await fixture("llama");
    const build = testBuild({ tp: 2 });
    const ranks = shardForTp(f.graph, build);
    const pre = ranks.map((g) => runPasses(g, passesBefore("add-norm-fusion"), build).graph);
    const post = pre.map((g) => runPasses(g, ["add-norm-fusion"], build));
    expect(post[0].logs["add-norm-fusion"].matches).toHaveLength(4);
    expect(opCounts(post[1].graph).add_rms_norm).toBe(4);
    const d = maxAbsDiff(
      goldenLogits(f, pre, 2, build),
      goldenLogits(
        f,
        post.map((p) => p.graph),
        2,
        build,
      ),
    );
    expect(d).toBeLessThanOrEqual(1e-5);
  });
});
