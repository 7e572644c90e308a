// Unary elementwise ops next to a norm folded into the norm kernel (ew-chain.ts chains):
//
//   f(norm(x, ..))          ⇒ norm(x, ..) {post: [.., f]}    f applied to the normalised output y
//   norm(f(x), ..)          ⇒ norm(x, ..) {pre: [f, ..]}     f applied to x as the kernel reads it
//   add_norm(f(x), r, ..)   ⇒ add_norm(x, r, ..) {pre: [f, ..]}   (sum = f(x) + r)
//
// f is tanh, sigmoid, exp, scale or softcap, and the value between the two ops has no other reader, so it
// need not exist at all. Runs after add-norm-fusion (so the add + norm pair is one op first, and a pre
// chain never sits between an add and the norm that would fuse with it) and after epilogue-fusion (a chain
// after a GEMM is taken by the GEMM, whose output is written anyway).
import type { Graph, Node } from "../src/ir/types.ts";
import { CHAIN_OPS, chainOf, chainStep, MAX_CHAIN, withStep } from "../src/ops/ew-chain.ts";
import { type Match, makeNode, type Pattern, patternPass } from "./pattern.ts";

const NORMS = ["rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm"];

interface NormChainMatch extends Match {
  norm: Node;
  /** The norm's new input 0. */
  x: number | null;
  key: "pre" | "post";
  step: { op: string; arg: number };
}

function fullChain(n: Node, key: "pre" | "post"): boolean {
  return chainOf(n.attrs, key).ops.length >= MAX_CHAIN;
}

/** The norm with the step added to its chain, reading x, standing in for `outs` (its outputs, y possibly f(y)). */
function rewriteNorm(g: Graph, m: NormChainMatch, outs: number[]) {
  const c = chainOf(m.norm.attrs, m.key);
  const attrs = { ...m.norm.attrs, [m.key]: withStep(c, m.step, m.key === "post" ? "end" : "start") };
  const name = (id: number) => g.values.get(id)!.name;
  const norm = makeNode(g, m.norm.op, [m.x, ...m.norm.inputs.slice(1)], attrs, {
    scope: m.norm.scope,
    names: outs.map(name),
  });
  return { nodes: [norm], replace: outs.map((o, i) => [o, norm.outputs[i]] as [number, number]) };
}

export const normPostPattern: Pattern<NormChainMatch> = {
  name: "norm-post",
  ops: [...CHAIN_OPS],
  match(_g, f, uses) {
    const norm = uses.producerOp(f.inputs[0], ...NORMS);
    const step = chainStep(f);
    if (!norm || !step || norm.outputs[0] !== f.inputs[0] || !uses.singleUse(norm.outputs[0])) return null;
    if (fullChain(norm, "post")) return null;
    return { root: f, nodes: [norm, f], norm, x: norm.inputs[0], key: "post", step, where: norm.scope };
  },
  rewrite(g, m) {
    return rewriteNorm(g, m, [m.root.outputs[0], ...m.norm.outputs.slice(1)]);
  },
};

export const normPrePattern: Pattern<NormChainMatch> = {
  name: "norm-pre",
  ops: NORMS,
  match(_g, norm, uses) {
    const f = uses.producerOp(norm.inputs[0], ...CHAIN_OPS);
    const step = f && chainStep(f);
    if (!f || !step || !uses.singleUse(f.outputs[0]) || fullChain(norm, "pre")) return null;
    return { root: norm, nodes: [f, norm], norm, x: f.inputs[0], key: "pre", step, where: norm.scope };
  },
  rewrite(g, m) {
    return rewriteNorm(g, m, m.norm.outputs);
  },
};

export const normChainFusion = patternPass("norm-chain-fusion", [normPostPattern, normPrePattern], {
  idle: "no tanh / sigmoid / exp / scale / softcap next to a norm with no other reader",
});
