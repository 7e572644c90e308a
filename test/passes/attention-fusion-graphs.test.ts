// Attention fusion (passes/attention-fusion.ts) on packed-QKV blocks built by hand (hand-graphs.ts):
// the fused node's attributes, inputs and scope with and without rope, and each refusal with the note
// the fusion report prints for it (the graph is then left as it was, with no other note).
import { describe, expect, it } from "vitest";
import { attentionFusion } from "../../passes/attention-fusion.ts";
import { addInput } from "../../src/ir/builder.ts";
import {
  ckptWeight,
  HEAD_DIM,
  HEADS,
  KV_HEADS,
  type PackedBlock,
  type PackedOptions,
  packedBlock,
  TOKENS,
} from "./hand-graphs.ts";
import { expectLeftAlone, ops, runBuilt } from "./helpers.ts";

const run = (o: PackedOptions = {}, edit?: (b: PackedBlock) => void) =>
  runBuilt(attentionFusion, packedBlock, o, edit);

/** Left unfused with exactly this note (the pass itself did not fail). */
function refused(o: PackedOptions, note: string, edit?: (b: PackedBlock) => void) {
  expectLeftAlone(run(o, edit), [`attention: layer 0: ${note}; left unfused`]);
}

describe("attention-fusion on a hand-built packed QKV block", () => {
  it("with rope: fused_attention(qkv, positions, inv_freq), rope's style and rotary_dim, scoped under the block", () => {
    const { out, log, qkv, positions, invFreq, attn } = run({}, (b) => {
      for (const r of [b.rq!, b.rk!]) Object.assign(r.attrs, { rotary_dim: 2, style: "gptj" });
    });
    expect(log.matches).toEqual([{ pattern: "attention", where: "m.l0.attn" }]);
    expect(log.notes).toEqual([]);
    expect(ops(out)).toEqual(["linear", "fused_attention"]);
    const fa = out.nodes[1];
    expect(fa.inputs).toEqual([qkv.outputs[0], positions, invFreq]);
    expect(fa.attrs).toEqual({ ...attn.attrs, rotary_dim: 2, rope_style: "gptj" });
    expect(fa.scope).toBe("m.l0.attn");
    expect(out.outputs.y).toBe(fa.outputs[0]);
    expect(out.values.get(fa.outputs[0])!.shape).toEqual([TOKENS, HEADS * HEAD_DIM]);
  });

  it("without rope: rotary_dim 0 (neox), the graph's positions and no inv_freq", () => {
    const { out, log, qkv, positions, attn } = run({ rope: "none" });
    expect(log.matches).toHaveLength(1);
    expect(log.notes).toEqual([]);
    const fa = out.nodes.find((n) => n.op === "fused_attention")!;
    expect(fa.inputs).toEqual([qkv.outputs[0], positions, null]);
    expect(fa.attrs).toEqual({ ...attn.attrs, rotary_dim: 0, rope_style: "neox" });
    expect(fa.scope).toBe("m.l0.attn");
  });

  it("without rope and without a positions input there is nothing to feed the kernel: left alone, silently", () => {
    const { out, log, g } = run({ rope: "none" }, (b) => {
      delete b.g.inputs.positions;
    });
    expect([log.matches, log.notes, log.failed]).toEqual([[], [], undefined]);
    expect(ops(out)).toEqual(ops(g));
  });

  it("scopes with no common prefix: the fused node takes the attention's scope", () => {
    const { out, log } = run({}, (b) => {
      b.split.scope = "other.split";
    });
    expect(log.matches).toEqual([{ pattern: "attention", where: "m.l0.attn.q_proj" }]);
    expect(out.nodes[1].scope).toBe("m.l0.attn.q_proj");
  });

  it("refuses a split that does not give q, k, v in order", () => {
    const order = "the split does not give q, k, v in order";
    refused({ rope: "none", order: [0, 2, 1] }, order);
    // One query head and one KV head: every part is 4 wide, so q may be any of them.
    refused({ rope: "none", heads: [1, 1], order: [1, 1, 2] }, order);
    refused({ rope: "none" }, order, (b) => {
      b.attn.inputs[1] = addInput(b.g, "k", "f32", [TOKENS, KV_HEADS * HEAD_DIM]).id;
    });
    refused({ rope: "none" }, order, (b) => {
      b.attn.inputs[2] = addInput(b.g, "v", "f32", [TOKENS, KV_HEADS * HEAD_DIM]).id;
    });
    // A fourth part after q, k, v.
    refused({ rope: "none", sizes: [8, 4, 4, 4] }, order);
  });

  it("refuses a v width that is not the KV heads' (attention's infer checks only q and k)", () => {
    refused({ sizes: [8, 4, 6] }, "split sizes 8,4,6 do not match the heads");
  });

  it("refuses rope on only one of q and k", () => {
    refused({ rope: "q" }, "rope on only one of q and k");
    refused({ rope: "k" }, "rope on only one of q and k");
  });

  it("refuses q and k with different rotary embeddings", () => {
    const differ = "q and k get different rotary embeddings";
    refused({ ropeAttrs: [{ rotary_dim: 2 }, {}] }, differ);
    refused({ ropeAttrs: [{}, { style: "gptj" }] }, differ);
    refused({}, differ, (b) => {
      b.rk!.inputs[1] = addInput(b.g, "positions2", "i32", [TOKENS]).id;
    });
    refused({}, differ, (b) => {
      b.rk!.inputs[2] = ckptWeight(b.g, "rope.inv_freq2", [HEAD_DIM / 2]);
    });
    // q's rope over 4 heads of 2 (the same 8 columns), k's over 1 of 4; both rotate 2 dims.
    refused({ ropeAttrs: [{ num_heads: 4, head_dim: 2, rotary_dim: 2 }, { rotary_dim: 2 }] }, differ);
    refused({ ropeAttrs: [{ rotary_dim: 2 }, { num_heads: 2, head_dim: 2, rotary_dim: 2 }] }, differ);
  });

  it("refuses rotated q or k read elsewhere, and split outputs read elsewhere", () => {
    refused({}, "rotated q/k have other users", (b) => {
      b.g.outputs.q = b.rq!.outputs[0];
    });
    refused({}, "rotated q/k have other users", (b) => {
      b.g.outputs.k = b.rk!.outputs[0];
    });
    refused({}, "q/k/v have other users", (b) => {
      b.g.outputs.v = b.split.outputs[2];
    });
  });
});
