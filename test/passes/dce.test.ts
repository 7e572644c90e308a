// Dead-code elimination (passes/dce.ts) on a graph built by hand: a dead chain goes as a whole, a node
// with one live output of two stays, and values nothing refers to any more leave the value table (graph
// inputs stay even when unread), each dropped node logged and the values counted in a note.
import { describe, expect, it } from "vitest";
import { eliminateDeadCode } from "../../passes/dce.ts";
import { addInput, addNode, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import { runPass } from "./helpers.ts";

describe("dce on a hand-built graph", () => {
  it("drops the dead chain, keeps a split with one live output, prunes unreferenced values", () => {
    const g = emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    const x = addInput(g, "x", "f32", [2, 4]).id;
    const unread = addInput(g, "unread", "f32", [2, 4]).id;
    const w = addWeight(g, "w", "f32", [4], { kind: "constant", data: [1, 2, 3, 4] }).id;
    const [t] = addNode(g, "tanh", [x], {}, { scope: "dead.t" });
    const [d] = addNode(g, "exp", [t]); // no scope: logged by its op
    const [s0, s1] = addNode(g, "split", [x], { sizes: [2, 2] });
    const [k] = addNode(g, "sigmoid", [x]);
    g.outputs = { logits: k, s: s1 };
    const { out, log } = runPass(eliminateDeadCode, g);
    expect(out.nodes.map((n) => n.op)).toEqual(["split", "sigmoid"]);
    expect(log.matches).toEqual([
      { pattern: "dead-node", where: "dead.t" },
      { pattern: "dead-node", where: "exp" },
    ]);
    // t, d and the unread weight go; the split's unread output s0 stays with its node; graph inputs stay.
    expect([...out.values.keys()].sort((a, b) => a - b)).toEqual(
      [x, unread, s0, s1, k].sort((a, b) => a - b),
    );
    expect(out.values.has(w) || out.values.has(t) || out.values.has(d)).toBe(false);
    expect(log.notes).toEqual(["dropped 3 unreferenced values"]);
    // The input graph is untouched.
    expect(g.nodes).toHaveLength(4);
    expect(g.values.has(w)).toBe(true);
  });

  it("nothing dead: no match and no note", () => {
    const g = emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 });
    const x = addInput(g, "x", "f32", [4]).id;
    const [k] = addNode(g, "sigmoid", [x]);
    g.outputs = { logits: k };
    const { out, log } = runPass(eliminateDeadCode, g);
    expect(out.nodes).toHaveLength(1);
    expect(log.matches).toEqual([]);
    expect(log.notes).toEqual([]);
  });
});
