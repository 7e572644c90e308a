// Add-norm fusion (passes/add-norm-fusion.ts) on residual blocks built by hand (hand-graphs.ts): what
// fuses (rms_norm and layer_norm, with the operands, attributes, scope and names of the fused node and
// both of its outputs taking over their readers), and what is left alone (a norm with a pre chain, a
// norm whose input no add writes).
import { describe, expect, it } from "vitest";
import { addNormFusion } from "../../passes/add-norm-fusion.ts";
import { addInput, addNode } from "../../src/ir/builder.ts";
import type { Attrs } from "../../src/ir/types.ts";
import { ckptWeight, graphWithX, HIDDEN, TOKENS } from "./hand-graphs.ts";
import { runPass } from "./helpers.ts";

/**
 * s = add(x, r) (or mul, `producer`); y = norm(s, w[, b]); z = add(y, s), a reader of both outputs
 * (as the next block reads the normalised value and the residual stream). Outputs y, s, z.
 */
function residualNorm(o: { norm?: "rms_norm" | "layer_norm"; attrs?: Attrs; producer?: "add" | "mul" } = {}) {
  const { g, x } = graphWithX();
  const r = addInput(g, "r", "f32", [TOKENS, HIDDEN]).id;
  const norm = o.norm ?? "rms_norm";
  const w = ckptWeight(g, "m.l0.ln.weight", [HIDDEN]);
  const b = norm === "layer_norm" ? [ckptWeight(g, "m.l0.ln.bias", [HIDDEN])] : [];
  const [s] = addNode(g, o.producer ?? "add", [x, r], {}, { scope: "m.l0", names: ["m.l0.resid"] });
  const attrs = o.attrs ?? { eps: 1e-5 };
  const [y] = addNode(g, norm, [s, w, ...b], attrs, { scope: "m.l0.ln", names: ["m.l0.ln.out"] });
  const [z] = addNode(g, "add", [y, s], {}, { scope: "m.l1" });
  g.outputs = { y, s, z };
  return { g, x, r, w, b, s, y, attrs };
}

describe("add-norm-fusion on a hand-built residual block", () => {
  it("add + rms_norm → add_rms_norm(x, r, w) → (normed, sum), named and scoped as the norm and the add", () => {
    const { g, x, r, w, s, y, attrs } = residualNorm();
    const { out, log } = runPass(addNormFusion, g);
    expect(log.matches).toEqual([{ pattern: "add-norm", where: "m.l0.ln" }]);
    expect(out.nodes.map((n) => n.op)).toEqual(["add_rms_norm", "add"]);
    const [f, next] = out.nodes;
    expect(f.inputs).toEqual([x, r, w]);
    expect(f.attrs).toEqual(attrs);
    expect(f.scope).toBe("m.l0.ln");
    expect(f.outputs.map((id) => out.values.get(id)!.name)).toEqual(["m.l0.ln.out", "m.l0.resid"]);
    // The reader of y and s now reads the fused node's outputs, in the same operand order.
    expect(next.inputs).toEqual(f.outputs);
    expect(out.outputs).toEqual({ y: f.outputs[0], s: f.outputs[1], z: next.outputs[0] });
    expect(f.outputs).not.toContain(y);
    expect(f.outputs).not.toContain(s);
  });

  it("add + layer_norm → add_layer_norm(x, r, w, b)", () => {
    const { g, x, r, w, b } = residualNorm({ norm: "layer_norm" });
    const { out, log } = runPass(addNormFusion, g);
    expect(log.matches).toEqual([{ pattern: "add-norm", where: "m.l0.ln" }]);
    expect(out.nodes[0].op).toBe("add_layer_norm");
    expect(out.nodes[0].inputs).toEqual([x, r, w, b[0]]);
  });

  it("a norm with a pre chain is left alone (the chain would apply to x alone)", () => {
    const attrs = { eps: 1e-5, pre: { ops: ["scale"], args: [2] } };
    const { g } = residualNorm({ attrs });
    const { out, log } = runPass(addNormFusion, g);
    expect(log.matches).toEqual([]);
    expect(out.nodes.map((n) => n.op)).toEqual(["add", "rms_norm", "add"]);
  });

  it("a norm whose input no add writes is left alone", () => {
    const { g } = residualNorm({ producer: "mul" });
    const { out, log } = runPass(addNormFusion, g);
    expect(log.matches).toEqual([]);
    expect(out.nodes.map((n) => n.op)).toEqual(["mul", "rms_norm", "add"]);
  });
});
