// The rewrite core's parts on graphs built by hand: use counts, the nodes a replacement makes, where a
// match is reported, splice's checks and placement, topoSort's order, the driver's fixed point, failed
// rewrites and the passes that wrap it (passes/pattern.ts).
import { describe, expect, it } from "vitest";
import { PassLog, passContext } from "../../passes/pass.ts";
import {
  bestEffortPass,
  commonScope,
  type Match,
  makeNode,
  type Pattern,
  patternPass,
  rewriteGraph,
  splice,
  topoSort,
  Uses,
} from "../../passes/pattern.ts";
import { addInput, addNode, addValue, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { Dim, Graph, Node } from "../../src/ir/types.ts";
import { uniformWithStd } from "../../src/weights/recipe.ts";
import { testBuild } from "./helpers.ts";

const T = { sym: "num_tokens", max: 8 };

function graph(): { g: Graph; x: number } {
  const g = emptyGraph({ numLayers: 0, numKvHeads: 1, headDim: 1 });
  return { g, x: addInput(g, "x", "f32", [T, 4]).id };
}

/** x → silu (block.0) → silu (block.1) → silu (block.2) → y */
function chain(): Graph {
  const { g, x } = graph();
  let h = x;
  for (let i = 0; i < 3; i++) h = addNode(g, "silu", [h], {}, { scope: `block.${i}` })[0];
  g.outputs.y = h;
  return g;
}

const ctxOf = (log = new PassLog()) => passContext(testBuild(), log);

/** Replaces a silu by a gelu of the same input (so it matches each silu once). */
function toGelu(
  name: string,
  o: { where?: (n: Node) => string | undefined; fail?: (n: Node) => boolean } = {},
) {
  const calls: string[] = [];
  const p: Pattern = {
    name,
    ops: ["silu"],
    match: (_g, node) => ({ root: node, nodes: [node], where: o.where?.(node) }),
    rewrite(g, m) {
      calls.push(m.root.scope ?? "");
      if (o.fail?.(m.root)) throw new Error("refused here");
      const n = makeNode(g, "gelu", [m.root.inputs[0]], {}, { scope: m.root.scope });
      return { nodes: [n], replace: [[m.root.outputs[0], n.outputs[0]]] };
    },
  };
  return { p, calls };
}

describe("Uses", () => {
  it("producers, consumers with their slots, and use counts where graph outputs count once", () => {
    const { g, x } = graph();
    const [a] = addNode(g, "silu", [x], {}, { scope: "s" });
    const [p, q] = addNode(g, "split", [a], { sizes: [2, 2] });
    const [b] = addNode(g, "add", [p, p]);
    const [c] = addNode(g, "add", [q, b]);
    g.outputs = { c, q };
    const [silu, split, addB, addC] = g.nodes;
    const u = new Uses(g);
    expect(u.producer(null)).toBeUndefined();
    expect(u.producer(x)).toBeUndefined();
    expect(u.producer(q)).toBe(split);
    expect(u.producerOp(a, "gelu", "silu")).toBe(silu);
    expect(u.producerOp(a, "gelu")).toBeUndefined();
    expect(u.producerOp(x, "silu")).toBeUndefined();
    expect(g.nodes.map((n) => u.index(n))).toEqual([0, 1, 2, 3]);
    expect(u.index({ op: "silu", inputs: [x], outputs: [999], attrs: {} })).toBe(-1);
    expect(u.consumers(p)).toEqual([
      { node: addB, slot: 0 },
      { node: addB, slot: 1 },
    ]);
    expect(u.consumers(b)).toEqual([{ node: addC, slot: 1 }]);
    expect(u.consumers(c)).toEqual([]);
    expect([x, a, p, q, b, c].map((id) => u.count(id))).toEqual([1, 1, 2, 2, 1, 1]);
    expect([x, a, p, q, b, c].map((id) => u.singleUse(id))).toEqual([true, true, false, false, true, false]);
    expect([a, q, c].map((id) => u.isGraphOutput(id))).toEqual([false, true, true]);
  });

  it("an absent optional input is no use of anything", () => {
    const { g, x } = graph();
    const w = addWeight(g, "w", "f32", [4, 4], { kind: "constant", data: new Array(16).fill(0) }).id;
    addNode(g, "linear", [x, w, null, null]);
    const u = new Uses(g);
    expect(u.consumers(x)).toHaveLength(1);
    expect(u.consumers(w)).toEqual([{ node: g.nodes[0], slot: 1 }]);
  });
});

describe("makeNode", () => {
  it("infers and allocates its outputs, named from the scope and op unless names are given", () => {
    const { g, x } = graph();
    const inputs = [x];
    const n = makeNode(g, "silu", inputs, {});
    expect(n).toEqual({ op: "silu", inputs: [x], outputs: [1], attrs: {}, scope: undefined });
    expect(n.inputs).not.toBe(inputs);
    expect(g.values.get(1)).toEqual({
      id: 1,
      name: "silu.silu",
      dtype: "f32",
      shape: [T, 4],
      kind: "activation",
    });
    const s = makeNode(g, "split", [x], { sizes: [1, 3] }, { scope: "blk", names: ["first"] });
    expect(s.scope).toBe("blk");
    expect(s.attrs).toEqual({ sizes: [1, 3] });
    expect(s.outputs.map((id) => g.values.get(id)!.name)).toEqual(["first", "blk.split.1"]);
    expect(s.outputs.map((id) => g.values.get(id)!.shape)).toEqual([
      [T, 1],
      [T, 3],
    ]);
    expect(g.values.get(makeNode(g, "gelu", [x], {}, { scope: "blk" }).outputs[0])!.name).toBe("blk.gelu");
  });
});

describe("commonScope", () => {
  it("of no names, one name, and names with nothing in common", () => {
    expect(commonScope([])).toBe("");
    expect(commonScope(["a.b"])).toBe("a.b");
    expect(commonScope(["a.b", "a.b"])).toBe("a.b");
    expect(commonScope(["x.y", "z.y"])).toBe("");
  });
});

describe("where a match is reported", () => {
  /** x → linear(W) (mlp.up) → silu (act) → y; the pattern covers both. */
  function linearSilu(recipe: "checkpoint" | "constant", scopes: (string | undefined)[]) {
    const { g, x } = graph();
    const w =
      recipe === "checkpoint"
        ? addWeight(g, "w", "f32", [4, 4], {
            kind: "checkpoint",
            parts: [{ name: "w", shape: [4, 4], transforms: [] }],
            transforms: [],
            init: uniformWithStd(0.02),
          }).id
        : addWeight(g, "w", "f32", [4, 4], { kind: "constant", data: new Array(16).fill(0) }).id;
    const [h] = addNode(g, "linear", [x, w, null, null], {}, { scope: scopes[0] });
    g.outputs.y = addNode(g, "silu", [h], {}, { scope: scopes[1] })[0];
    const pattern: Pattern<Match & { lin: Node }> = {
      name: "fold",
      ops: ["silu"],
      match(_g, node, uses) {
        const lin = uses.producerOp(node.inputs[0], "linear");
        return lin && lin.attrs.activation === undefined ? { root: node, nodes: [lin, node], lin } : null;
      },
      rewrite(g2, m) {
        const n = makeNode(g2, "linear", m.lin.inputs, { activation: "silu" }, { scope: m.lin.scope });
        return { nodes: [n], replace: [[m.root.outputs[0], n.outputs[0]]] };
      },
    };
    const log = new PassLog();
    rewriteGraph(g, [pattern], ctxOf(log));
    return log.matches.map((m) => m.where);
  }

  it("the scope of the nodes reading a checkpoint weight, else of all matched nodes, else the root's scope or op", () => {
    expect(linearSilu("checkpoint", ["m.l0.mlp.up", "m.l0.act"])).toEqual(["m.l0.mlp.up"]);
    expect(linearSilu("constant", ["m.l0.mlp.up", "m.l0.act"])).toEqual(["m.l0"]);
    expect(linearSilu("constant", [undefined, "m.l0.act"])).toEqual(["m.l0.act"]);
    expect(linearSilu("checkpoint", [undefined, "m.l0.act"])).toEqual(["m.l0.act"]);
    expect(linearSilu("constant", ["a.x", "b.x"])).toEqual(["b.x"]);
    expect(linearSilu("constant", [undefined, undefined])).toEqual(["silu"]);
  });

  it("a match's own where wins", () => {
    const log = new PassLog();
    rewriteGraph(chain(), [toGelu("g", { where: (n) => `here ${n.scope}` }).p], ctxOf(log));
    expect(log.matches.map((m) => m.where)).toEqual(["here block.0", "here block.1", "here block.2"]);
  });
});

describe("splice", () => {
  const [n0, n1, n2] = [0, 1, 2];

  it("refuses unknown values and any change of dtype, rank or dim, naming both values", () => {
    const g = chain();
    const b = g.nodes[n1].outputs[0];
    const m = { root: g.nodes[n1], nodes: [g.nodes[n1]] };
    const val = (dtype: "f32" | "f16", shape: Dim[]) =>
      addValue(g, { name: "r", dtype, shape, kind: "activation" }).id;
    const ok = val("f32", [T, 4]);
    expect(() => splice(g, m, { nodes: [], replace: [[999, ok]] })).toThrow(
      `replacement of %999 by %${ok}: unknown value`,
    );
    expect(() => splice(g, m, { nodes: [], replace: [[b, 999]] })).toThrow(
      `replacement of %${b} by %999: unknown value`,
    );
    const f16 = val("f16", [T, 4]);
    expect(() => splice(g, m, { nodes: [], replace: [[b, f16]] })).toThrow(
      `replacement changes a type: %${b} f32[num_tokens,4] → %${f16} f16[num_tokens,4]`,
    );
    const rank = val("f32", [T, 4, 1]);
    expect(() => splice(g, m, { nodes: [], replace: [[b, rank]] })).toThrow(
      `replacement changes a type: %${b} f32[num_tokens,4] → %${rank} f32[num_tokens,4,1]`,
    );
    const dim = val("f32", [T, 2]);
    expect(() => splice(g, m, { nodes: [], replace: [[b, dim]] })).toThrow(
      /changes a type.*f32\[num_tokens,2\]$/,
    );
    const sym = val("f32", [{ sym: "other", max: 8 }, 4]);
    expect(() => splice(g, m, { nodes: [], replace: [[b, sym]] })).toThrow(/changes a type.*f32\[other,4\]$/);
  });

  it("puts the new nodes where the first erased node was, remaps readers and outputs, keeps the rest as they were", () => {
    const g = chain();
    const [a, , c] = g.nodes.map((n) => n.outputs[0]);
    const n = makeNode(g, "gelu", [a], {}, { scope: "new" });
    const out = splice(
      g,
      { root: g.nodes[n2], nodes: [g.nodes[n1], g.nodes[n2]] },
      { nodes: [n], replace: [[c, n.outputs[0]]] },
    );
    expect(out.nodes).toEqual([g.nodes[n0], n]);
    expect(out.nodes[0]).toBe(g.nodes[n0]); // untouched nodes are not copied
    expect(out.outputs).toEqual({ y: n.outputs[0] });
    expect(out.values).toBe(g.values);
    expect(g.nodes).toHaveLength(3);
    expect(g.outputs).toEqual({ y: c });
  });

  it("erases only r.erase when given, placing the new nodes at the root when it is not erased", () => {
    const g = chain();
    const [a, b] = g.nodes.map((n) => n.outputs[0]);
    const n = makeNode(g, "gelu", [a], {}, { scope: "new" });
    // Root n1 stays (erase: []): the new node goes just before it, and n2 now reads the new node.
    const out = splice(
      g,
      { root: g.nodes[n1], nodes: [g.nodes[n1]] },
      { nodes: [n], replace: [[b, n.outputs[0]]], erase: [] },
    );
    expect(out.nodes.map((x) => x.scope)).toEqual(["block.0", "new", "block.1", "block.2"]);
    expect(out.nodes[2]).toBe(g.nodes[n1]);
    expect(out.nodes[3]).toEqual({ ...g.nodes[n2], inputs: [n.outputs[0]] });
    expect(g.nodes[n2].inputs).toEqual([b]); // the original node is not edited
    // With erase: [n2] and nodes [n1, n2], n1 stays.
    const m2 = makeNode(g, "gelu", [b], {}, { scope: "new2" });
    const out2 = splice(
      g,
      { root: g.nodes[n2], nodes: [g.nodes[n1], g.nodes[n2]] },
      { nodes: [m2], replace: [[g.nodes[n2].outputs[0], m2.outputs[0]]], erase: [g.nodes[n2]] },
    );
    expect(out2.nodes.map((x) => x.scope)).toEqual(["block.0", "block.1", "new2"]);
  });

  it("refuses a root outside the graph and erased values still read or still a graph output", () => {
    const g = chain();
    const [, b, c] = g.nodes.map((n) => n.outputs[0]);
    const stray: Node = { op: "silu", inputs: [0], outputs: [999], attrs: {} };
    expect(() => splice(g, { root: stray, nodes: [] }, { nodes: [], replace: [] })).toThrow(
      "the match's root is not in the graph",
    );
    expect(() => splice(g, { root: g.nodes[n1], nodes: [g.nodes[n1]] }, { nodes: [], replace: [] })).toThrow(
      `erased value %${b} is still read by silu`,
    );
    expect(() => splice(g, { root: g.nodes[n2], nodes: [g.nodes[n2]] }, { nodes: [], replace: [] })).toThrow(
      `erased value %${c} is a graph output`,
    );
  });

  it("moves a new node below the value it reads", () => {
    // x → s0 → a; x → s1 → b; y = add(a, b). Replace a by gelu(b), placed where s0 was: it must follow s1.
    const { g, x } = graph();
    const [a] = addNode(g, "silu", [x], {}, { scope: "s0" });
    const [b] = addNode(g, "silu", [x], {}, { scope: "s1" });
    g.outputs.y = addNode(g, "add", [a, b], {}, { scope: "y" })[0];
    const n = makeNode(g, "gelu", [b], {}, { scope: "new" });
    const out = splice(
      g,
      { root: g.nodes[0], nodes: [g.nodes[0]] },
      { nodes: [n], replace: [[a, n.outputs[0]]] },
    );
    expect(out.nodes.map((x) => x.scope)).toEqual(["s1", "new", "y"]);
  });
});

describe("topoSort", () => {
  it("returns an ordered list as it is", () => {
    const g = chain();
    expect(topoSort(g, g.nodes)).toBe(g.nodes);
  });

  it("keeps the original order among ready nodes, and a node reading a value twice waits for it once", () => {
    // A = silu(x); B = add(A, A); C, D independent. Given [B, A, C, D]: B moves just below A.
    const { g, x } = graph();
    const [a] = addNode(g, "silu", [x], {}, { scope: "A" });
    addNode(g, "add", [a, a], {}, { scope: "B" });
    addNode(g, "silu", [x], {}, { scope: "C" });
    addNode(g, "gelu", [x], {}, { scope: "D" });
    const [A, B, C, D] = g.nodes;
    expect(topoSort(g, [B, A, C, D]).map((n) => n.scope)).toEqual(["A", "B", "C", "D"]);
    expect(topoSort(g, [C, B, D, A]).map((n) => n.scope)).toEqual(["C", "D", "A", "B"]);
  });

  it("a node that becomes ready goes in among the ready nodes by its original position", () => {
    // Given [W, A, J, U, Z, V] with U reading A and W reading V: after A, U (3) joins the ready J, Z, V
    // (2, 4, 5) between J and Z.
    const { g, x } = graph();
    const id = (scope: string, from = x) => addNode(g, "silu", [from], {}, { scope })[0];
    const a = id("A");
    id("U", a);
    const v = id("V");
    id("W", v);
    id("J");
    id("Z");
    const by = (s: string) => g.nodes.find((n) => n.scope === s)!;
    const order = ["W", "A", "J", "U", "Z", "V"].map(by);
    expect(topoSort(g, order).map((n) => n.scope)).toEqual(["A", "J", "U", "Z", "V", "W"]);
  });

  it("names the first node of a cycle, with its scope when it has one", () => {
    const g = chain();
    const [a, b, c] = g.nodes;
    expect(() => topoSort(g, [{ ...a, inputs: [c.outputs[0]] }, b, c])).toThrow(
      /^rewrite made a cycle through silu \(block\.0\)$/,
    );
    // block.0 is not in the cycle (block.1 ↔ block.2): the message names the first node left waiting.
    expect(() => topoSort(g, [a, { ...b, inputs: [c.outputs[0]] }, c])).toThrow(/through silu \(block\.1\)$/);
    expect(() => topoSort(g, [{ ...a, inputs: [a.outputs[0]] }])).toThrow(/through silu \(block\.0\)$/); // reads itself
    const noScope = (n: Node) => ({ ...n, scope: undefined });
    expect(() => topoSort(g, [{ ...noScope(a), inputs: [c.outputs[0]] }, noScope(b), noScope(c)])).toThrow(
      /^rewrite made a cycle through silu$/,
    );
  });
});

describe("rewriteGraph", () => {
  it("asks only the patterns whose ops include the node's op", () => {
    let asked = 0;
    const never: Pattern = {
      name: "never",
      ops: ["gelu"],
      match: () => {
        asked++;
        return null;
      },
      rewrite: () => ({ nodes: [], replace: [] }),
    };
    const out = rewriteGraph(chain(), [never], ctxOf());
    expect(asked).toBe(0);
    expect(out.nodes.map((n) => n.op)).toEqual(["silu", "silu", "silu"]);
  });

  it("stops after 10 rewrites a node + 100 when the patterns never reach a fixed point", () => {
    let rewrites = 0;
    const forever: Pattern = {
      name: "forever",
      ops: ["silu"],
      match: (_g, node) => ({ root: node, nodes: [node] }),
      rewrite(g, m) {
        rewrites++;
        const n = makeNode(g, "silu", [m.root.inputs[0]], {}, { scope: m.root.scope });
        return { nodes: [n], replace: [[m.root.outputs[0], n.outputs[0]]] };
      },
    };
    expect(() => rewriteGraph(chain(), [forever], ctxOf())).toThrow(
      /^patterns did not reach a fixed point after 130 rewrites$/,
    );
    expect(rewrites).toBe(131); // steps 0 to 130 each rewrite once
  });

  it("a failed rewrite is noted once and not retried at that node, while the other nodes go on", () => {
    const flaky = toGelu("flaky", { fail: (n) => n.scope === "block.0" });
    const log = new PassLog();
    const out = rewriteGraph(chain(), [flaky.p], ctxOf(log));
    expect(flaky.calls).toEqual(["block.0", "block.1", "block.2"]);
    expect(log.notes).toEqual(["flaky at block.0: not applied (refused here)"]);
    expect(log.matches).toEqual([
      { pattern: "flaky", where: "block.1" },
      { pattern: "flaky", where: "block.2" },
    ]);
    expect(out.nodes.map((n) => n.op)).toEqual(["silu", "gelu", "gelu"]);
  });

  it("another pattern may still rewrite a node where one failed", () => {
    const flaky = toGelu("flaky", { fail: () => true });
    const other = toGelu("other");
    const log = new PassLog();
    const out = rewriteGraph(chain(), [flaky.p, other.p], ctxOf(log));
    expect(log.matches.map((m) => m.pattern)).toEqual(["other", "other", "other"]);
    expect(out.nodes.map((n) => n.op)).toEqual(["gelu", "gelu", "gelu"]);
  });
});

describe("bestEffortPass and patternPass", () => {
  it("a pass whose graph fails verification returns its input, with the first line of the reason", () => {
    const g = chain();
    const broken = bestEffortPass("broken", (input) => ({
      ...input,
      nodes: [{ ...input.nodes[0], inputs: [99] }, ...input.nodes.slice(1)],
    }));
    const log = new PassLog();
    expect(broken.run(g, ctxOf(log))).toBe(g);
    const msg =
      "could not apply (node 0 (silu in block.0): input %99 is not defined before it); graph left unchanged";
    expect(log.failed).toBe(msg);
    expect(log.notes).toEqual([msg]);
    expect(log.reports).toBe(true);
    const twoLines = bestEffortPass("two", () => {
      throw new Error("first line\nsecond line");
    });
    const log2 = new PassLog();
    twoLines.run(g, ctxOf(log2));
    expect(log2.failed).toBe("could not apply (first line); graph left unchanged");
  });

  it("a pass that works returns its graph, marked as reporting, with no note", () => {
    const g = chain();
    const out = chain();
    const log = new PassLog();
    expect(bestEffortPass("ok", () => out).run(g, ctxOf(log))).toBe(out);
    expect(log.reports).toBe(true);
    expect(log.failed).toBeUndefined();
    expect(log.notes).toEqual([]);
  });

  it("patternPass notes its idle line only when nothing matched", () => {
    const idle = "nothing to fuse";
    const logA = new PassLog();
    patternPass("p", [toGelu("g").p], { idle }).run(chain(), ctxOf(logA));
    expect(logA.matches).toHaveLength(3);
    expect(logA.notes).toEqual([]);
    const noMatch: Pattern = {
      name: "n",
      ops: ["silu"],
      match: () => null,
      rewrite: () => ({ nodes: [], replace: [] }),
    };
    const logB = new PassLog();
    const g = chain();
    const out = patternPass("p", [noMatch], { idle }).run(g, ctxOf(logB));
    expect(logB.notes).toEqual([idle]);
    expect(out.nodes).toEqual(g.nodes);
    const logC = new PassLog();
    patternPass("p", [noMatch]).run(chain(), ctxOf(logC));
    expect(logC.notes).toEqual([]);
  });
});
