// Gate/up fusion: the two projections of a gated MLP → one GEMM over [W_gate; W_up] (concatenated
// lazily in the weight recipe) followed by one gated-activation kernel.
//
//   mul(silu(linear(x, Wg)), linear(x, Wu))          ⇒ gated_act(linear(x, [Wg; Wu]), silu)       (SwiGLU)
//   mul(gelu_tanh(linear(x, Wg)), linear(x, Wu))     ⇒ gated_act(linear(x, [Wg; Wu]), gelu_tanh)  (GeGLU)
//
// Either operand order of the mul matches. Exact-erf GELU has no gated_act form and is left alone.
import type { Graph, Node } from "../src/ir/types.ts";
import { concatWeights, fusedName, whyNotConcat } from "./concat-weights.ts";
import type { PassContext } from "./pass.ts";
import { commonScope, type Match, makeNode, type Pattern, patternPass, type Uses } from "./pattern.ts";

interface GateUpMatch extends Match {
  gate: Node;
  act: Node;
  up: Node;
  activation: "silu" | "gelu_tanh";
}

function plainLinear(uses: Uses, n: Node | undefined): n is Node {
  return (
    !!n &&
    n.op === "linear" &&
    (n.attrs.activation ?? "none") === "none" &&
    (n.inputs[3] ?? null) === null &&
    uses.singleUse(n.outputs[0])
  );
}

function activationOf(act: Node): "silu" | "gelu_tanh" | null {
  if (act.op === "silu") return "silu";
  if (act.op === "gelu") return (act.attrs.approximate ?? "tanh") === "tanh" ? "gelu_tanh" : null;
  return null;
}

export const gateUpPattern: Pattern<GateUpMatch> = {
  name: "gate-up",
  ops: ["mul"],
  match(g: Graph, mul: Node, uses: Uses, ctx: PassContext): GateUpMatch | null {
    for (const [a, b] of [
      [0, 1],
      [1, 0],
    ]) {
      const act = uses.producerOp(mul.inputs[a], "silu", "gelu");
      if (!act || !uses.singleUse(act.outputs[0])) continue;
      const gate = uses.producer(act.inputs[0]);
      const up = uses.producer(mul.inputs[b]);
      if (!plainLinear(uses, gate) || !plainLinear(uses, up) || gate === up) continue;
      if (gate.inputs[0] !== up.inputs[0]) continue;
      const where = commonScope([gate.scope ?? "", up.scope ?? ""]) || mul.op;
      const activation = activationOf(act);
      if (!activation) {
        ctx.log.note(`gate-up: ${where}: exact-erf gelu has no gated_act kernel; left unfused`);
        return null;
      }
      const wg = g.values.get(gate.inputs[1]!)!;
      const wu = g.values.get(up.inputs[1]!)!;
      if (wg.shape[0] !== wu.shape[0]) {
        ctx.log.note(`gate-up: ${where}: gate and up widths differ; left unfused`);
        return null;
      }
      const bg = gate.inputs[2] ?? null;
      const bu = up.inputs[2] ?? null;
      const why =
        whyNotConcat(g, [wg.id, wu.id]) ??
        (bg === null && bu === null
          ? null
          : bg === null || bu === null
            ? "only one projection has a bias"
            : whyNotConcat(g, [bg, bu]));
      if (why) {
        ctx.log.note(`gate-up: ${where}: ${why}; left unfused`);
        return null;
      }
      return { root: mul, nodes: [gate, act, up, mul], gate, act, up, activation };
    }
    return null;
  },
  rewrite(g, m) {
    const { gate, up } = m;
    const name = (n: Node, i: number) => g.values.get(n.inputs[i]!)!.name;
    const W = concatWeights(
      g,
      [gate.inputs[1]!, up.inputs[1]!],
      fusedName([name(gate, 1), name(up, 1)], "gate_up_proj"),
    );
    const B =
      (gate.inputs[2] ?? null) === null
        ? null
        : concatWeights(
            g,
            [gate.inputs[2]!, up.inputs[2]!],
            fusedName([name(gate, 2), name(up, 2)], "gate_up_proj"),
          );
    const parent = commonScope([gate.scope ?? "", up.scope ?? ""]);
    const scope = parent ? `${parent}.gate_up_proj` : "gate_up_proj";
    const lin = makeNode(
      g,
      "linear",
      [gate.inputs[0], W.id, B?.id ?? null, null],
      { activation: "none" },
      { scope },
    );
    const act = makeNode(
      g,
      "gated_act",
      [lin.outputs[0]],
      { activation: m.activation },
      { scope: parent || scope },
    );
    return { nodes: [lin, act], replace: [[m.root.outputs[0], act.outputs[0]]] };
  },
};

export const gateUpFusion = patternPass("gate-up-fusion", [gateUpPattern], {
  idle: "no gated MLP (mul of an activated GEMM and a GEMM of the same input)",
});
