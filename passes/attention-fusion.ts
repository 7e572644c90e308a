// Attention fusion: split of the packed QKV GEMM output + rope on q and k + attention (which writes
// the KV cache) → one fused_attention op that reads the packed qkv directly and applies rope inside
// (GPT-NeoX half rotation or GPT-J interleaved, partial rotary_dim; the inv_freq table carries any
// llama3 scaling). Without rope (a model that has none), rotary_dim is 0.
//
//   q0, k0, v = split(qkv); attention(rope(q0), rope(k0), v)  ⇒  fused_attention(qkv, positions, inv_freq)
import type { Graph, Node } from "../src/ir/types.ts";
import type { PassContext } from "./pass.ts";
import { commonScope, type Match, makeNode, type Pattern, patternPass, type Uses } from "./pattern.ts";

interface AttnMatch extends Match {
  split: Node;
  ropes: Node[];
}

export const attentionPattern: Pattern<AttnMatch> = {
  name: "attention",
  ops: ["attention"],
  match(g: Graph, attn: Node, uses: Uses, ctx: PassContext): AttnMatch | null {
    const [q, k, v] = attn.inputs as number[];
    const where = `layer ${attn.attrs.layer}`;
    const rq = uses.producerOp(q, "rope");
    const rk = uses.producerOp(k, "rope");
    const sq = rq ? rq.inputs[0]! : q;
    const sk = rk ? rk.inputs[0]! : k;
    const split = uses.producerOp(sq, "split");
    if (!split) {
      ctx.log.note(
        `attention: ${where}: q/k/v are not one packed QKV output (is qkv-fusion disabled?); left unfused`,
      );
      return null;
    }
    if (
      split.outputs.length !== 3 ||
      split.outputs[0] !== sq ||
      split.outputs[1] !== sk ||
      split.outputs[2] !== v
    ) {
      ctx.log.note(`attention: ${where}: the split does not give q, k, v in order; left unfused`);
      return null;
    }
    const nH = attn.attrs.num_heads as number;
    const nKv = attn.attrs.num_kv_heads as number;
    const D = attn.attrs.head_dim as number;
    const sizes = split.attrs.sizes as number[];
    if (sizes[0] !== nH * D || sizes[1] !== nKv * D || sizes[2] !== nKv * D) {
      ctx.log.note(`attention: ${where}: split sizes ${sizes} do not match the heads; left unfused`);
      return null;
    }
    if (!!rq !== !!rk) {
      ctx.log.note(`attention: ${where}: rope on only one of q and k; left unfused`);
      return null;
    }
    if (rq && rk) {
      const same = (key: string) => JSON.stringify(rq.attrs[key]) === JSON.stringify(rk.attrs[key]);
      if (
        !same("rotary_dim") ||
        !same("style") ||
        rq.inputs[1] !== rk.inputs[1] ||
        rq.inputs[2] !== rk.inputs[2] ||
        rq.attrs.head_dim !== D ||
        rk.attrs.head_dim !== D ||
        rq.attrs.num_heads !== nH ||
        rk.attrs.num_heads !== nKv
      ) {
        ctx.log.note(`attention: ${where}: q and k get different rotary embeddings; left unfused`);
        return null;
      }
      if (!uses.singleUse(q) || !uses.singleUse(k)) {
        ctx.log.note(`attention: ${where}: rotated q/k have other users; left unfused`);
        return null;
      }
    }
    if (!split.outputs.every((o) => uses.singleUse(o))) {
      ctx.log.note(`attention: ${where}: q/k/v have other users; left unfused`);
      return null;
    }
    if (!rq && g.inputs.positions === undefined) return null;
    const ropes = rq && rk ? [rq, rk] : [];
    const scope = commonScope([split.scope ?? "", attn.scope ?? ""]) || attn.scope;
    return { root: attn, nodes: [split, ...ropes, attn], split, ropes, where: scope };
  },
  rewrite(g, m) {
    const attn = m.root;
    const [rq] = m.ropes;
    const attrs = rq
      ? { ...attn.attrs, rotary_dim: rq.attrs.rotary_dim, rope_style: rq.attrs.style }
      : { ...attn.attrs, rotary_dim: 0, rope_style: "neox" };
    const inputs = rq
      ? [m.split.inputs[0], rq.inputs[1], rq.inputs[2]]
      : [m.split.inputs[0], g.inputs.positions, null];
    const fused = makeNode(g, "fused_attention", inputs, attrs, { scope: m.where });
    return { nodes: [fused], replace: [[attn.outputs[0], fused.outputs[0]]] };
  },
};

export const attentionFusion = patternPass("attention-fusion", [attentionPattern]);
