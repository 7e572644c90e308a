// src/ir/builder.ts and src/ir/verify.ts: graphs built with the builder, then broken by hand the way a
// faulty pass could break them, each refused by verifyGraph with its exact one-line message naming the
// first bad node; and the builder's own refusals, value names and graph copies.
import { describe, expect, it } from "vitest";
import {
  addInput,
  addNode,
  addValue,
  addWeight,
  cloneGraph,
  emptyGraph,
  inferNode,
} from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import { GraphError, verifyGraph } from "../../src/ir/verify.ts";
import { defineOp } from "../../src/ops/index.ts";

const N = { sym: "num_tokens", max: 8 };
const constant = { kind: "constant" as const, data: [1, 1, 1, 1] };

// An op whose infer() disagrees with its declared output count (as a wrong op declaration would).
defineOp({
  name: "test_verify_miscounted",
  inputs: ["x"],
  numOutputs: 2,
  doc: "infers one output, declares two",
  infer: ([x]) => [x!],
  ref: () => [],
});

/**
 * x: f32[num_tokens,4] (input), w: f32[4] (weight), b: f32[4] (weight);
 * n = layer_norm(x, w, null) in "model.norm", s = add(n, x), (p, q) = split(s) sizes [1, 3];
 * outputs: logits = s.
 */
function graph(): { g: Graph; x: number; w: number; n: number; s: number; p: number; q: number } {
  const g = emptyGraph({ numLayers: 1, numKvHeads: 1, headDim: 4 });
  const x = addInput(g, "x", "f32", [N, 4]).id;
  const w = addWeight(g, "w", "f32", [4], constant).id;
  const [n] = addNode(g, "layer_norm", [x, w, null], { eps: 1e-5 }, { scope: "model.norm" });
  const [s] = addNode(g, "add", [n, x]);
  const [p, q] = addNode(g, "split", [s], { sizes: [1, 3] });
  g.outputs.logits = s;
  return { g, x, w, n, s, p, q };
}

function refusal(g: Graph): string {
  try {
    verifyGraph(g);
  } catch (e) {
    expect(e).toBeInstanceOf(GraphError);
    expect((e as Error).name).toBe("GraphError");
    return (e as Error).message;
  }
  throw new Error("verifyGraph accepted the graph");
}

describe("verifyGraph", () => {
  it("accepts a well-formed graph (inputs, weights, an absent optional input, two outputs of a node)", () => {
    const { g } = graph();
    expect(() => verifyGraph(g)).not.toThrow();
    expect(() => verifyGraph(emptyGraph({ numLayers: 0, numKvHeads: 0, headDim: 0 }))).not.toThrow();
  });

  it("an input consumed before the node defining it", () => {
    const { g, s } = graph();
    [g.nodes[1], g.nodes[2]] = [g.nodes[2], g.nodes[1]];
    expect(refusal(g)).toBe(`node 1 (split): input %${s} is not defined before it`);
  });

  it("an input no value or node defines (the scope named)", () => {
    const { g } = graph();
    g.nodes[0].inputs[0] = 99;
    expect(refusal(g)).toBe("node 0 (layer_norm in model.norm): input %99 is not defined before it");
  });

  it("a weight is defined from the start; an activation value is not, until its node", () => {
    const { g, x } = graph();
    // Reading the weight w as the add's second input keeps shapes apart: refused by inference, not order.
    g.nodes[1].inputs[1] = g.nodes[0].inputs[1];
    expect(refusal(g)).toBe("node 1 (add): add: shapes [num_tokens,4] and [4] differ");
    const h = graph();
    h.g.values.get(h.x)!.kind = "activation";
    delete h.g.inputs.x;
    expect(refusal(h.g)).toBe(`node 0 (layer_norm in model.norm): input %${x} is not defined before it`);
  });

  it("a type error the op's inference finds, prefixed with the node", () => {
    const { g } = graph();
    g.nodes[2].attrs = { sizes: [2, 3] };
    expect(refusal(g)).toBe("node 2 (split): split: sizes sum to 5, last dim is 4");
    const h = graph();
    h.g.nodes[1].op = "nope";
    expect(refusal(h.g)).toMatch(/^node 1 \(nope\): unknown op "nope" \(known: .*\badd\b.*\)$/);
  });

  it("a node with more or fewer outputs than its op infers", () => {
    const { g } = graph();
    g.nodes[2].attrs = { sizes: [4] };
    expect(refusal(g)).toBe("node 2 (split): 2 outputs, the op infers 1");
    const h = graph();
    h.g.nodes[1].outputs.push(h.p);
    expect(refusal(h.g)).toBe("node 1 (add): 2 outputs, the op infers 1");
  });

  it("an output id with no value", () => {
    const { g } = graph();
    g.nodes[1].outputs = [123];
    expect(refusal(g)).toBe("node 1 (add): output %123 has no value");
  });

  it("a value defined twice: by two nodes, or a node writing a graph input", () => {
    const { g, s } = graph();
    g.nodes[2].op = "add";
    g.nodes[2].inputs = [s, s];
    g.nodes[2].attrs = {};
    g.nodes[2].outputs = [s];
    expect(refusal(g)).toBe(`node 2 (add): output %${s} is defined twice`);
    const h = graph();
    h.g.nodes[1].outputs = [h.x];
    expect(refusal(h.g)).toBe(`node 1 (add): output %${h.x} is defined twice`);
  });

  it("an output whose dtype, rank or dims differ from what the op infers", () => {
    const cases: [string, (g: Graph, s: number) => void, string][] = [
      ["dtype", (g, s) => (g.values.get(s)!.dtype = "f16"), "f16[num_tokens,4]"],
      ["rank", (g, s) => (g.values.get(s)!.shape = [N, 4, 1]), "f32[num_tokens,4,1]"],
      ["rank (fewer)", (g, s) => (g.values.get(s)!.shape = [N]), "f32[num_tokens]"],
      ["fixed dim", (g, s) => (g.values.get(s)!.shape = [N, 5]), "f32[num_tokens,5]"],
      [
        "symbol",
        (g, s) => (g.values.get(s)!.shape = [{ sym: "num_logits", max: 8 }, 4]),
        "f32[num_logits,4]",
      ],
      ["symbol for number", (g, s) => (g.values.get(s)!.shape = [8, 4]), "f32[8,4]"],
    ];
    for (const [, breakIt, got] of cases) {
      const { g, s } = graph();
      breakIt(g, s);
      expect(refusal(g)).toBe(`node 1 (add): output %${s} is ${got}, the op infers f32[num_tokens,4]`);
    }
    // The second output of a node is checked too.
    const { g, q } = graph();
    g.values.get(q)!.shape = [N, 1];
    expect(refusal(g)).toBe(
      `node 2 (split): output %${q} is f32[num_tokens,1], the op infers f32[num_tokens,3]`,
    );
    // The same symbol with another bound is the same dim.
    const h = graph();
    h.g.values.get(h.s)!.shape = [{ sym: "num_tokens", max: 64 }, 4];
    expect(() => verifyGraph(h.g)).not.toThrow();
  });

  it("a graph output no node or input defines", () => {
    const { g } = graph();
    g.outputs.hidden = 77;
    expect(refusal(g)).toBe('graph output "hidden" (%77) is never defined');
    const h = graph();
    h.g.outputs = { logits: h.x, w: h.w, q: h.q };
    expect(() => verifyGraph(h.g)).not.toThrow();
  });
});

describe("builder", () => {
  it("ids in order, graph inputs by name, weights with their recipe and hints, outputs named by scope and op", () => {
    const { g, x, w, n, s, p, q } = graph();
    expect([x, w, n, s, p, q]).toEqual([0, 1, 2, 3, 4, 5]);
    expect(g.nextId).toBe(6);
    expect(g.inputs).toEqual({ x: 0 });
    expect(g.values.get(w)).toEqual({
      id: 1,
      name: "w",
      dtype: "f32",
      shape: [4],
      kind: "weight",
      recipe: constant,
      hints: undefined,
    });
    expect(g.values.get(x)).toEqual({ id: 0, name: "x", dtype: "f32", shape: [N, 4], kind: "input" });
    expect([n, s, p, q].map((id) => g.values.get(id)!.name)).toEqual([
      "model.norm.layer_norm",
      "add.add",
      "split.split.0",
      "split.split.1",
    ]);
    expect([n, s, p, q].map((id) => g.values.get(id)!.kind)).toEqual(Array(4).fill("activation"));
    expect(g.values.get(q)!.shape).toEqual([N, 3]);
    expect(g.nodes[0]).toEqual({
      op: "layer_norm",
      inputs: [x, w, null],
      outputs: [n],
      attrs: { eps: 1e-5 },
      scope: "model.norm",
    });
    expect(g.nodes[1]).toEqual({ op: "add", inputs: [n, x], outputs: [s], attrs: {}, scope: undefined });
    const h = emptyGraph({ numLayers: 1, numKvHeads: 1, headDim: 4 });
    const v = addWeight(h, "v", "f16", [2], constant, { parallel: "column" });
    expect(v.hints).toEqual({ parallel: "column" });
    const [a, b] = addNode(h, "split", [v.id], { sizes: [1, 1] }, { scope: "l.0", names: ["first"] });
    expect([h.values.get(a)!.name, h.values.get(b)!.name]).toEqual(["first", "l.0.split.1"]);
    const [c] = addNode(h, "add", [a, b], {}, { scope: "l.0" });
    expect(h.values.get(c)!.name).toBe("l.0.add");
  });

  it("inferNode refuses too many inputs, a missing required one, an unknown value, a miscounted op", () => {
    const { g, x, w, n } = graph();
    expect(() => inferNode(g, "add", [n, x, x], {})).toThrow(new Error("add: 3 inputs given, takes 2"));
    expect(() => inferNode(g, "add", [n, null], {})).toThrow(new Error('add: required input "b" missing'));
    expect(() => inferNode(g, "add", [n], {})).toThrow(new Error('add: required input "b" missing'));
    expect(() => inferNode(g, "layer_norm", [null, w], { eps: 1e-5 })).toThrow(
      new Error('layer_norm: required input "x" missing'),
    );
    expect(() => inferNode(g, "add", [n, 42], {})).toThrow(new Error("add: input value 42 does not exist"));
    expect(() => inferNode(g, "test_verify_miscounted", [x], {})).toThrow(
      new Error("test_verify_miscounted: inferred 1 outputs"),
    );
    // Optional inputs may be null or left off; the inference sees them as absent.
    expect(inferNode(g, "layer_norm", [x, w], { eps: 1e-5 })).toEqual([{ dtype: "f32", shape: [N, 4] }]);
    expect(
      inferNode(
        g,
        "linear",
        [x, addValue(g, { name: "m", dtype: "f32", shape: [6, 4], kind: "weight" }).id, null, null],
        {},
      ),
    ).toEqual([{ dtype: "f32", shape: [N, 6] }]);
  });

  it("addNode adds nothing when inference refuses", () => {
    const { g, n } = graph();
    expect(() => addNode(g, "add", [n, 42])).toThrow("add: input value 42 does not exist");
    expect(g.nodes.length).toBe(3);
    expect(g.nextId).toBe(6);
  });

  it("cloneGraph copies values, nodes, inputs, outputs and meta: changing the copy leaves the original", () => {
    const { g, s, x } = graph();
    const before = structuredClone(g);
    const c = cloneGraph(g);
    expect(c).toEqual(g);
    c.values.get(s)!.dtype = "f16";
    c.values.set(100, { id: 100, name: "z", dtype: "f32", shape: [1], kind: "activation" });
    c.nodes[0].inputs[2] = x;
    c.nodes[0].outputs.push(100);
    c.nodes[0].attrs.eps = 1;
    c.nodes.push(c.nodes[1]);
    c.inputs.y = 100;
    c.outputs.z = 100;
    c.meta.numLayers = 9;
    c.nextId = 101;
    expect(g).toEqual(before);
  });
});
