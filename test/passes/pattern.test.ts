// The rewrite core: fixed point on a clone, replacements checked, failures skipped and noted.
import { describe, expect, it } from "vitest";
import { PassLog, passContext } from "../../passes/pass.ts";
import {
  bestEffortPass,
  commonScope,
  type Match,
  makeNode,
  type Pattern,
  rewriteGraph,
  topoSort,
  Uses,
} from "../../passes/pattern.ts";
import { addInput, addNode, emptyGraph } from "../../src/ir/builder.ts";
import type { Graph, Node } from "../../src/ir/types.ts";
import { verifyGraph } from "../../src/ir/verify.ts";
import { testBuild } from "./helpers.ts";

/** x → silu → silu → silu → output */
function chain(): Graph {
  const g = emptyGraph({ numLayers: 0, numKvHeads: 1, headDim: 1 });
  const x = addInput(g, "x", "f32", [{ sym: "num_tokens", max: 8 }, 4]).id;
  let h = x;
  for (let i = 0; i < 3; i++) h = addNode(g, "silu", [h], {}, { scope: `block.${i}` })[0];
  g.outputs.y = h;
  return g;
}

// silu(silu(a)) → gelu(a): each rewrite removes one node, so the fixed point is reached.
const squash: Pattern<Match & { inner: Node }> = {
  name: "squash",
  ops: ["silu"],
  match(_g, node, uses) {
    const inner = uses.producerOp(node.inputs[0], "silu");
    return inner && uses.singleUse(inner.outputs[0]) ? { root: node, nodes: [inner, node], inner } : null;
  },
  rewrite(g, m) {
    const n = makeNode(g, "gelu", [m.inner.inputs[0]], { approximate: "tanh" }, { scope: m.root.scope });
    return { nodes: [n], replace: [[m.root.outputs[0], n.outputs[0]]] };
  },
};

describe("pattern rewriter", () => {
  it("applies patterns to a fixed point on a clone and records every match", () => {
    const g = chain();
    const log = new PassLog();
    const out = rewriteGraph(g, [squash], passContext(testBuild(), log));
    expect(out.nodes.map((n) => n.op)).toEqual(["gelu", "silu"]);
    expect(g.nodes.map((n) => n.op)).toEqual(["silu", "silu", "silu"]); // input untouched
    expect(log.matches).toEqual([{ pattern: "squash", where: "block" }]);
    verifyGraph(out);
  });

  it("match never mutates: calling it twice gives the same answer and the graph is unchanged", () => {
    const g = chain();
    const snapshot = JSON.stringify([g.nodes, [...g.values]]);
    const uses = new Uses(g);
    const ctx = passContext(testBuild());
    const a = squash.match(g, g.nodes[1], uses, ctx);
    const b = squash.match(g, g.nodes[1], uses, ctx);
    expect(a?.inner).toBe(b?.inner);
    expect(JSON.stringify([g.nodes, [...g.values]])).toBe(snapshot);
  });

  it("a rewrite that changes a value's type is refused, noted, and the graph stays correct", () => {
    const widen: Pattern<Match> = {
      name: "bad",
      ops: ["silu"],
      match: (_g, node) => ({ root: node, nodes: [node] }),
      rewrite(g, m) {
        const n = makeNode(g, "gated_act", [m.root.inputs[0]], { activation: "silu" });
        return { nodes: [n], replace: [[m.root.outputs[0], n.outputs[0]]] };
      },
    };
    const log = new PassLog();
    const out = rewriteGraph(chain(), [widen], passContext(testBuild(), log));
    expect(out.nodes.map((n) => n.op)).toEqual(["silu", "silu", "silu"]);
    expect(log.matches).toHaveLength(0);
    expect(log.notes[0]).toMatch(/bad at block\.0: not applied \(replacement changes a type/);
    verifyGraph(out);
  });

  it("a pass that throws returns its input unchanged and says so", () => {
    const boom = bestEffortPass("boom", () => {
      throw new Error("unexpected model");
    });
    const g = chain();
    const log = new PassLog();
    expect(boom.run(g, passContext(testBuild(), log))).toBe(g);
    expect(log.failed).toMatch(/could not apply \(unexpected model\); graph left unchanged/);
  });

  it("topoSort keeps a valid order and moves only what must move", () => {
    const g = chain();
    const [a, b, c] = g.nodes;
    expect(topoSort(g, [a, b, c])).toEqual([a, b, c]);
    expect(topoSort(g, [a, c, b])).toEqual([a, b, c]);
    const cyc = { ...a, inputs: [c.outputs[0]] };
    expect(() => topoSort(g, [cyc, b, c])).toThrow(/cycle/);
  });

  it("Uses counts graph outputs as uses", () => {
    const g = chain();
    const u = new Uses(g);
    expect(u.count(g.outputs.y)).toBe(1);
    expect(u.singleUse(g.outputs.y)).toBe(false);
    expect(u.singleUse(g.nodes[0].outputs[0])).toBe(true);
  });

  it("commonScope takes the common dotted prefix", () => {
    expect(commonScope(["a.b.q_proj", "a.b.k_proj", "a.b.v_proj"])).toBe("a.b");
    expect(commonScope(["model.layers.1.x", "model.layers.10.x"])).toBe("model.layers");
  });
});
