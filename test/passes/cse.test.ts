// Common-subexpression elimination (passes/cse.ts) on a graph built by hand: what counts as the same
// node (attributes in any key order, add/mul inputs in any order, but not sub's), constant weights with
// the same data merged first so that their readers merge too, and graph outputs redirected to the node kept.
import { describe, expect, it } from "vitest";
import { eliminateCommonSubexpressions } from "../../passes/cse.ts";
import { addInput, addNode, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import { runPass } from "./helpers.ts";

const cse = (g: Graph) => runPass(eliminateCommonSubexpressions, g);

describe("cse on a hand-built graph", () => {
  it("add / mul match whatever their input order; sub does not; attributes match in any key order", () => {
    const g = emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    const x = addInput(g, "x", "f32", [2, 4]).id;
    const y = addInput(g, "y", "f32", [2, 4]).id;
    const [a1] = addNode(g, "add", [x, y], {}, { scope: "s.a1" });
    const [a2] = addNode(g, "add", [y, x], {}, { scope: "s.a2" });
    const [m1] = addNode(g, "mul", [a1, y]);
    const [m2] = addNode(g, "mul", [y, a2]);
    const [s1] = addNode(g, "sub", [x, y]);
    const [s2] = addNode(g, "sub", [y, x]);
    const post1 = { ops: ["softcap", "scale"], args: [30, 0.5] };
    const post2 = { args: [30, 0.5], ops: ["softcap", "scale"] };
    const [c1] = addNode(g, "scale", [m1], { factor: 2, post: post1 } as never);
    const [c2] = addNode(g, "scale", [m2], { post: post2, factor: 2 } as never);
    const [c3] = addNode(g, "scale", [m2], { factor: 3, post: post1 } as never);
    const [c4] = addNode(g, "scale", [m2], {
      factor: 2,
      post: { ops: ["scale", "softcap"], args: [0.5, 30] },
    } as never);
    const [o] = addNode(g, "add", [s1, s2]);
    const [p] = addNode(g, "add", [c1, c2]);
    const [q] = addNode(g, "add", [c3, c4]);
    g.outputs = { logits: o, p, q, dup: c2 };
    const nodes = g.nodes.length;
    const { out, log } = cse(g);
    // a2 → a1, m2 → m1, c2 → c1 (same attrs in another key order); the rest differ.
    expect(log.matches).toEqual([
      { pattern: "duplicate-node", where: "s.a2" },
      { pattern: "duplicate-node", where: "mul" },
      { pattern: "duplicate-node", where: "scale" },
    ]);
    expect(out.nodes).toHaveLength(nodes - 3);
    const byOut = (id: number) => out.nodes.find((n) => n.outputs.includes(id));
    expect(byOut(a2)).toBeUndefined();
    expect(byOut(m1)!.inputs).toEqual([a1, y]);
    expect(byOut(p)!.inputs).toEqual([c1, c1]);
    expect(byOut(q)!.inputs).toEqual([c3, c4]);
    expect(byOut(c3)!.inputs).toEqual([m1]);
    expect(byOut(o)!.inputs).toEqual([s1, s2]);
    // A graph output read from a dropped node now names the kept one.
    expect(out.outputs).toEqual({ logits: o, p, q, dup: c1 });
    // The input graph is untouched.
    expect(g.nodes).toHaveLength(nodes);
    expect(g.outputs.dup).toBe(c2);
  });

  it("constant weights with the same dtype, shape and data merge first, so their readers merge", () => {
    const g = emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    const x = addInput(g, "x", "f32", [4]).id;
    const k = (name: string, data: number[], shape = [4]) =>
      addWeight(g, name, "f32", shape, { kind: "constant", data }).id;
    const k1 = k("k1", [1, 2, 3, 4]);
    const k2 = k("k2", [1, 2, 3, 4]);
    const k3 = k("k3", [1, 2, 3, 5]);
    const k4 = k("k4", [1, 2, 3, 4], [2, 2]);
    // A checkpoint weight is never merged, even with the same shape.
    addWeight(g, "w", "f32", [4], {
      kind: "checkpoint",
      parts: [],
      transforms: [],
      init: { mean: 0, scale: 0 },
    });
    const [r1] = addNode(g, "mul", [x, k1]);
    const [r2] = addNode(g, "mul", [x, k2]);
    const [r3] = addNode(g, "mul", [x, k3]);
    const [r4] = addNode(g, "add", [r1, r2]);
    g.outputs = { logits: r4, r3, k4 };
    const { out, log } = cse(g);
    expect(log.matches).toEqual([
      { pattern: "constant", where: "k2" },
      { pattern: "duplicate-node", where: "mul" },
    ]);
    expect(out.nodes.map((n) => n.inputs)).toEqual([
      [x, k1],
      [x, k3],
      [r1, r1],
    ]);
    expect(out.outputs).toEqual({ logits: r4, r3, k4 });
  });
});
