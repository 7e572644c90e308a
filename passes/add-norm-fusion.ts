// Residual add + RMSNorm / LayerNorm → one kernel returning both the normalised value and the new
// residual stream (sum), so the hidden state makes one round trip instead of three.
//
//   s = add(x, r); y = rms_norm(s, w)       ⇒ y, s = add_rms_norm(x, r, w)
//   s = add(x, r); y = layer_norm(s, w, b)  ⇒ y, s = add_layer_norm(x, r, w, b)
//
// Every other reader of s (the residual stream of the next block) reads the op's sum output. All
// readers of y keep reading y: GPT-J's single LayerNorm that feeds attention and MLP in parallel stays
// one op with two consumers.
//
// Runs after epilogue-fusion: an add whose operand is a single-use GEMM output is cheaper folded into
// that GEMM (the GEMM writes the sum, the norm reads it: 4 row round trips of the hidden state against
// 5 for GEMM → add_rms_norm). What reaches this pass are adds a GEMM cannot take, e.g. after a
// tensor-parallel all_reduce, or every add when epilogue-fusion is disabled.
import type { Node } from "../src/ir/types.ts";
import { chainOf } from "../src/ops/ew-chain.ts";
import { type Match, makeNode, type Pattern, patternPass } from "./pattern.ts";

interface AddNormMatch extends Match {
  add: Node;
}

const FUSED: Record<string, string> = { rms_norm: "add_rms_norm", layer_norm: "add_layer_norm" };

export const addNormPattern: Pattern<AddNormMatch> = {
  name: "add-norm",
  ops: ["rms_norm", "layer_norm"],
  match(_g, norm, uses) {
    const add = uses.producerOp(norm.inputs[0], "add");
    // A pre chain applies to the norm's input, which would become add's first operand alone.
    if (!add || chainOf(norm.attrs, "pre").ops.length) return null;
    return { root: norm, nodes: [add, norm], add, where: norm.scope };
  },
  rewrite(g, m) {
    const norm = m.root;
    const name = (id: number) => g.values.get(id)!.name;
    const fused = makeNode(
      g,
      FUSED[norm.op],
      [m.add.inputs[0], m.add.inputs[1], ...norm.inputs.slice(1)],
      norm.attrs,
      {
        scope: norm.scope,
        names: [name(norm.outputs[0]), name(m.add.outputs[0])],
      },
    );
    return {
      nodes: [fused],
      replace: [
        [norm.outputs[0], fused.outputs[0]],
        [m.add.outputs[0], fused.outputs[1]],
      ],
    };
  },
};

export const addNormFusion = patternPass("add-norm-fusion", [addNormPattern], {
  idle: "no residual add feeds a norm (epilogue-fusion folded them into GEMMs)",
});
