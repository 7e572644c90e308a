// GEMM epilogues: work that would read and write a GEMM's output once more is folded into the GEMM.
//
//   gelu_tanh / silu (linear(x, W))         ⇒ linear(x, W) {activation}
//   f(linear(x, W)), f unary elementwise     ⇒ linear(x, W) {post: [.., f]}   (tanh, sigmoid, exp, scale,
//                                               softcap; e.g. Gemma 2's softcap after lm_head)
//   f(all_gather(linear(x, W)))              ⇒ all_gather(linear(x, W) {post: [.., f]})   (vocab-parallel lm_head)
//   add(linear(x, W), r)                     ⇒ linear(x, W, residual = r)
//   add(add(linear_a, linear_b), r)          ⇒ linear_b(residual = linear_a(residual = r))
//
// The last form is GPT-J's parallel block (attn_out + mlp_out + residual): the earlier GEMM adds the
// residual stream and the later one adds that, so the block needs no separate add kernel.
// The bias is already a linear input. A GEMM folds only what reads its output alone (one use), and
// gets at most one residual; the activation, then the post chain, run before the residual
// (post(act(x·Wᵀ + b)) + r), so a chain folds only into a linear without a residual yet and an activation
// only into one without a chain. The CUDA runtime applies the chain in registers in the decode gemv, on
// cuBLASLt's alpha (a leading scale with no bias or activation), or else in one kernel after the GEMM.
import type { Graph, Node } from "../src/ir/types.ts";
import { CHAIN_OPS, chainOf, chainStep, MAX_CHAIN, withStep } from "../src/ops/ew-chain.ts";
import { type Match, makeNode, type Pattern, patternPass, type Uses } from "./pattern.ts";

/** A linear whose output only this consumer reads, with no residual yet. */
function foldable(uses: Uses, id: number | null): Node | undefined {
  const lin = uses.producerOp(id, "linear");
  if (!lin || (lin.inputs[3] ?? null) !== null || !uses.singleUse(lin.outputs[0])) return undefined;
  return lin;
}

function withResidual(g: Graph, lin: Node, residual: number | null, scope = lin.scope): Node {
  return makeNode(g, "linear", [lin.inputs[0], lin.inputs[1], lin.inputs[2] ?? null, residual], lin.attrs, {
    scope,
    names: [g.values.get(lin.outputs[0])!.name],
  });
}

interface ActMatch extends Match {
  lin: Node;
  activation: string;
}

export const activationPattern: Pattern<ActMatch> = {
  name: "activation",
  ops: ["silu", "gelu"],
  match(_g, act, uses) {
    const lin = foldable(uses, act.inputs[0]);
    if (!lin || (lin.attrs.activation ?? "none") !== "none" || chainOf(lin.attrs, "post").ops.length)
      return null;
    const activation =
      act.op === "silu" ? "silu" : (act.attrs.approximate ?? "tanh") === "tanh" ? "gelu_tanh" : null;
    if (!activation) return null; // exact-erf gelu: the linear epilogue has only the tanh form
    return { root: act, nodes: [lin, act], lin, activation, where: lin.scope };
  },
  rewrite(g, m) {
    const lin = makeNode(
      g,
      "linear",
      m.lin.inputs,
      { ...m.lin.attrs, activation: m.activation },
      { scope: m.lin.scope },
    );
    return { nodes: [lin], replace: [[m.root.outputs[0], lin.outputs[0]]] };
  },
};

interface PostMatch extends Match {
  lin: Node;
  /** A vocab-parallel lm_head's all_gather between the linear and f (the chain moves before it). */
  gather?: Node;
  step: { op: string; arg: number };
}

export const postChainPattern: Pattern<PostMatch> = {
  name: "elementwise-epilogue",
  ops: [...CHAIN_OPS],
  match(_g, f, uses, ctx) {
    const step = chainStep(f);
    if (!step) return null;
    // Elementwise ops commute with all_gather's concatenation: at --tp N each rank's lm_head applies the chain.
    const gather = uses.producerOp(f.inputs[0], "all_gather");
    const lin = foldable(
      uses,
      gather ? (uses.singleUse(gather.outputs[0]) ? gather.inputs[0] : null) : f.inputs[0],
    );
    if (!lin) return null;
    const post = chainOf(lin.attrs, "post");
    if (post.ops.length >= MAX_CHAIN) {
      ctx.log.note(
        `${f.op} after ${lin.scope ?? "a linear"} left alone: the epilogue already holds ${MAX_CHAIN} ops`,
      );
      return null;
    }
    const nodes = gather ? [lin, gather, f] : [lin, f];
    return { root: f, nodes, lin, gather: gather ?? undefined, step, where: lin.scope };
  },
  rewrite(g, m) {
    const post = withStep(chainOf(m.lin.attrs, "post"), m.step, "end");
    const lin = makeNode(g, "linear", m.lin.inputs, { ...m.lin.attrs, post }, { scope: m.lin.scope });
    if (!m.gather) return { nodes: [lin], replace: [[m.root.outputs[0], lin.outputs[0]]] };
    const gather = makeNode(g, "all_gather", [lin.outputs[0]], m.gather.attrs, { scope: m.gather.scope });
    return { nodes: [lin, gather], replace: [[m.root.outputs[0], gather.outputs[0]]] };
  },
};

interface ChainMatch extends Match {
  first: Node;
  second: Node;
  residual: number;
}

export const parallelResidualPattern: Pattern<ChainMatch> = {
  name: "parallel-residual",
  ops: ["add"],
  match(_g, outer, uses) {
    for (const [a, b] of [
      [0, 1],
      [1, 0],
    ]) {
      const inner = uses.producerOp(outer.inputs[a], "add");
      if (!inner || !uses.singleUse(inner.outputs[0])) continue;
      const la = foldable(uses, inner.inputs[0]);
      const lb = foldable(uses, inner.inputs[1]);
      if (!la || !lb || la === lb) continue;
      const [first, second] = uses.index(la) < uses.index(lb) ? [la, lb] : [lb, la];
      const residual = outer.inputs[b]!;
      return { root: outer, nodes: [first, second, inner, outer], first, second, residual };
    }
    return null;
  },
  rewrite(g, m) {
    const first = withResidual(g, m.first, m.residual);
    const second = withResidual(g, m.second, first.outputs[0]);
    return { nodes: [first, second], replace: [[m.root.outputs[0], second.outputs[0]]] };
  },
};

interface ResidualMatch extends Match {
  lin: Node;
  residual: number;
}

export const residualPattern: Pattern<ResidualMatch> = {
  name: "residual",
  ops: ["add"],
  match(g, add, uses, ctx) {
    // Leave the inner add of a parallel block to parallelResidualPattern (anchored on the outer add).
    const consumers = uses.consumers(add.outputs[0]);
    if (consumers.length === 1 && uses.singleUse(add.outputs[0]) && consumers[0].node.op === "add")
      if (parallelResidualPattern.match(g, consumers[0].node, uses, ctx)) return null;
    const cands = [0, 1]
      .map((i) => ({ lin: foldable(uses, add.inputs[i]), residual: add.inputs[1 - i]! }))
      .filter((c): c is { lin: Node; residual: number } => !!c.lin && c.lin !== uses.producer(c.residual));
    if (!cands.length) return null;
    // Both operands GEMMs: the later one adds the earlier one's output (already computed by then).
    const c = cands.reduce((x, y) => (uses.index(y.lin) > uses.index(x.lin) ? y : x));
    return { root: add, nodes: [c.lin, add], lin: c.lin, residual: c.residual, where: c.lin.scope };
  },
  rewrite(g, m) {
    const lin = withResidual(g, m.lin, m.residual);
    return { nodes: [lin], replace: [[m.root.outputs[0], lin.outputs[0]]] };
  },
};

export const epilogueFusion = patternPass("epilogue-fusion", [
  activationPattern,
  postChainPattern,
  parallelResidualPattern,
  residualPattern,
]);
