// Gate/up fusion (passes/gate-up-fusion.ts) on gated MLPs built by hand (hand-graphs.ts): what fuses
// (either mul operand order, silu and tanh-gelu, with or without biases), what is refused and the
// note the fusion report prints for it, and the scopes and names of the nodes and weights it makes.
import { describe, expect, it } from "vitest";
import { gateUpFusion } from "../../passes/gate-up-fusion.ts";
import { addInput, addNode } from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import { ckptWeight, gatedMlp, HIDDEN, MLP_WIDTH, type MlpOptions, TOKENS } from "./hand-graphs.ts";
import { opCounts, runBuilt, writer } from "./helpers.ts";

/** The fused linear and gated_act of a fused graph. */
function fused(g: Graph) {
  const act = g.nodes.find((n) => n.op === "gated_act")!;
  return { act, lin: writer(g, act.inputs[0])! };
}

/** A graph input as wide as the projections. */
const wideInput = (g: Graph) => addInput(g, "r", "f32", [TOKENS, MLP_WIDTH]).id;

const run = (o: MlpOptions = {}, edit?: (b: ReturnType<typeof gatedMlp>) => void) =>
  runBuilt(gateUpFusion, gatedMlp, o, edit);

describe("gate-up-fusion on a hand-built gated MLP", () => {
  it("mul(silu(gate), up) → linear(x, [gate; up]) + gated_act(silu), scoped under the MLP", () => {
    const { out, log, x, mul } = run();
    expect(log.matches).toEqual([{ pattern: "gate-up", where: "m.l0.mlp" }]);
    expect(log.notes).toEqual([]);
    expect(out.nodes.map((n) => n.op)).toEqual(["linear", "gated_act"]);
    const { act, lin } = fused(out);
    expect(lin.inputs.slice(2)).toEqual([null, null]);
    expect(lin.inputs[0]).toBe(x);
    expect(lin.attrs).toEqual({ activation: "none" });
    expect(lin.scope).toBe("m.l0.mlp.gate_up_proj");
    expect(act.attrs).toEqual({ activation: "silu" });
    expect(act.scope).toBe("m.l0.mlp");
    expect(out.outputs.y).toBe(act.outputs[0]);
    expect(out.values.get(act.outputs[0])!.shape).toEqual(out.values.get(mul.outputs[0])!.shape);
    const w = out.values.get(lin.inputs[1]!)!;
    expect(w.name).toBe("m.l0.mlp.gate_up_proj.weight");
    expect(w.shape).toEqual([2 * MLP_WIDTH, HIDDEN]);
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.name)).toEqual([
      "m.l0.mlp.gate_proj.weight",
      "m.l0.mlp.up_proj.weight",
    ]);
  });

  it("mul(up, silu(gate)) fuses the same way: gate first in the weight", () => {
    const { out, log } = run({ upFirst: true });
    expect(log.matches).toHaveLength(1);
    const w = out.values.get(fused(out).lin.inputs[1]!)!;
    expect(w.recipe?.kind === "checkpoint" && w.recipe.parts.map((p) => p.name)).toEqual([
      "m.l0.mlp.gate_proj.weight",
      "m.l0.mlp.up_proj.weight",
    ]);
  });

  it("gelu without an approximate attribute is the tanh form; linears without an activation attribute are plain", () => {
    const { out, log } = run({ act: "gelu" }, (b) => {
      b.gate.attrs = {};
      b.up.attrs = {};
    });
    expect(log.matches).toHaveLength(1);
    expect(fused(out).act.attrs).toEqual({ activation: "gelu_tanh" });
    expect(run({ act: "gelu", approximate: "tanh" }).log.matches).toHaveLength(1);
  });

  it("exact-erf gelu is left alone, noted at the MLP's scope", () => {
    const { out, log, g } = run({ act: "gelu", approximate: "none" });
    expect(log.matches).toEqual([]);
    expect(out.nodes.map((n) => n.op)).toEqual(g.nodes.map((n) => n.op));
    expect(log.notes).toEqual([
      "gate-up: m.l0.mlp: exact-erf gelu has no gated_act kernel; left unfused",
      "no gated MLP (mul of an activated GEMM and a GEMM of the same input)",
    ]);
  });

  it("a projection that is not a plain GEMM (activation, residual, other readers, not a linear) is left alone", () => {
    const cases: [string, (b: ReturnType<typeof gatedMlp>) => void][] = [
      ["gate activation", (b) => (b.gate.attrs = { activation: "relu" })],
      ["up activation", (b) => (b.up.attrs = { activation: "relu" })],
      ["gate residual", (b) => (b.gate.inputs[3] = wideInput(b.g))],
      ["up residual", (b) => (b.up.inputs[3] = wideInput(b.g))],
      ["gate read twice", (b) => (b.g.outputs.gate = b.gate.outputs[0])],
      ["up read twice", (b) => (b.g.outputs.up = b.up.outputs[0])],
      // The up operand written by an op other than linear, from the same input.
      [
        "up not a linear",
        (b) => {
          const [s] = addNode(b.g, "split", [b.x], { sizes: [MLP_WIDTH, HIDDEN - MLP_WIDTH] });
          b.g.nodes.unshift(b.g.nodes.pop()!);
          b.mul.inputs[1] = s;
        },
      ],
      // The gate activation reads a graph input, which no node writes.
      ["gate is an input", (b) => (b.act.inputs[0] = wideInput(b.g))],
    ];
    for (const [name, edit] of cases) {
      const { out, log } = run({}, edit);
      expect([name, log.matches, log.failed, opCounts(out).gated_act]).toEqual([
        name,
        [],
        undefined,
        undefined,
      ]);
      expect(log.notes).toEqual(["no gated MLP (mul of an activated GEMM and a GEMM of the same input)"]);
    }
  });

  it("gate and up of different widths are noted (the weights' rows, as a quantised weight may store them)", () => {
    const { log } = run(
      {},
      (b) => (b.up.inputs[1] = ckptWeight(b.g, "m.l0.mlp.up_proj.weight2", [4, HIDDEN])),
    );
    expect(log.matches).toEqual([]);
    expect(log.notes[0]).toBe("gate-up: m.l0.mlp: gate and up widths differ; left unfused");
  });

  it("biases: both are concatenated like the weights; one alone, or ones that cannot be, leave it unfused", () => {
    const both = run({ bias: [true, true] });
    expect(both.log.matches).toHaveLength(1);
    const b = both.out.values.get(fused(both.out).lin.inputs[2]!)!;
    expect(b.name).toBe("m.l0.mlp.gate_up_proj.bias");
    expect(b.shape).toEqual([2 * MLP_WIDTH]);
    expect(b.recipe?.kind === "checkpoint" && b.recipe.parts.map((p) => p.name)).toEqual([
      "m.l0.mlp.gate_proj.bias",
      "m.l0.mlp.up_proj.bias",
    ]);
    for (const bias of [
      [true, false],
      [false, true],
    ] as [boolean, boolean][]) {
      const one = run({ bias });
      expect(one.log.matches).toEqual([]);
      expect(one.log.notes[0]).toBe("gate-up: m.l0.mlp: only one projection has a bias; left unfused");
    }
    const bf16 = run({ bias: [true, true] }, (m) => {
      m.up.inputs[2] = ckptWeight(m.g, "m.l0.mlp.up_proj.bias16", [MLP_WIDTH], "bf16");
    });
    expect(bf16.log.notes[0]).toBe("gate-up: m.l0.mlp: weights differ in dtype; left unfused");
  });

  it("weights that cannot be concatenated leave it unfused, with the reason", () => {
    const { log } = run({}, (b) => {
      b.gate.inputs[1] = ckptWeight(b.g, "m.l0.mlp.gate_proj.q", [MLP_WIDTH, HIDDEN], "i8");
    });
    expect(log.matches).toEqual([]);
    expect(log.notes[0]).toBe(
      "gate-up: m.l0.mlp: m.l0.mlp.gate_proj.q is i8 (quantised weights are not concatenated); left unfused",
    );
  });

  it("without scopes: the note says mul, the fused linear and gated_act are scoped gate_up_proj", () => {
    const strip = (b: ReturnType<typeof gatedMlp>) => {
      for (const n of b.g.nodes) n.scope = undefined;
    };
    const { out, log } = run({}, strip);
    expect(log.matches).toHaveLength(1);
    const { act, lin } = fused(out);
    expect([lin.scope, act.scope]).toEqual(["gate_up_proj", "gate_up_proj"]);
    const erf = run({ act: "gelu", approximate: "none" }, strip);
    expect(erf.log.notes[0]).toBe("gate-up: mul: exact-erf gelu has no gated_act kernel; left unfused");
  });
});
