// The DSL's tensor handle (src/dsl/tensor.ts): what each chainable method adds to the graph (op, inputs,
// attributes, scope, output names and shapes), its values through the ops' CPU reference semantics (each
// expected value worked out by hand), `features`, and `apply` / `applyMany`: the scope rules, absent
// optional inputs, and their refusals. The model graphs these build are checked by the goldens; here, the
// handle itself, method by method.
import { describe, expect, it } from "vitest";
import { Module } from "../../src/dsl/module.ts";
import { apply, applyMany, Tensor } from "../../src/dsl/tensor.ts";
import type { Graph } from "../../src/ir/types.ts";
import { shapeStr } from "../../src/ir/types.ts";
import { getOp, HostTensor, type RefContext } from "../../src/ops/index.ts";

const LIMITS = { maxBatchSize: 1, maxSeqLen: 8, maxNumTokens: 4 };
const INIT = { mean: 0, scale: 0 };

/** One line per node: `outputs = op(inputs) attrs [scope] : shape`, values by name (null: an absent input). */
function nodes(g: Graph): string[] {
  const name = (id: number | null) => (id === null ? "null" : g.values.get(id)!.name);
  return g.nodes.map(
    (n) =>
      `${n.outputs.map(name).join(", ")} = ${n.op}(${n.inputs.map(name).join(", ")}) ${JSON.stringify(n.attrs)} [${n.scope}] : ${shapeStr(g.values.get(n.outputs[0])!.shape)}`,
  );
}

/** Runs the graph's nodes in order with each op's reference semantics; `given` holds the weights' values. */
function evaluate(g: Graph, given: Map<number, number[]>): Map<number, number[]> {
  const env = new Map<number, HostTensor>();
  for (const [id, data] of given) {
    const shape = g.values.get(id)!.shape as number[];
    env.set(id, new HostTensor(shape, Float32Array.from(data)));
  }
  g.nodes.forEach((n, nodeIndex) => {
    const outs = getOp(n.op).ref(
      n.inputs.map((i) => (i === null ? null : env.get(i)!)),
      n.attrs,
      { nodeIndex } as unknown as RefContext,
    );
    n.outputs.forEach((id, k) => env.set(id, outs[k]));
  });
  return new Map([...env].map(([id, t]) => [id, [...t.data]]));
}

/** A module with two [2, 3] weights a and b (no scope). */
function twoWeights() {
  const m = new Module("f32", LIMITS);
  const a = m.param("a", [2, 3], INIT);
  const b = m.param("b", [2, 3], INIT);
  return { m, g: m.graph, a, b };
}

const A = [1, -2, 0.5, 4, 3, -1];
const B = [2, 4, -0.5, 8, -3, 0.25];
const close = (got: number[], want: number[]) => {
  expect(got).toHaveLength(want.length);
  // fp32 results: within a few ulps of the float64 value.
  got.forEach((x, i) =>
    expect(Math.abs(x - want[i]), `element ${i}`).toBeLessThan(1e-6 * Math.max(1, Math.abs(want[i]))),
  );
};

describe("Tensor methods", () => {
  it("add, sub, mul, div: one node each on [this, other], named after the op, values elementwise in that order", () => {
    const { g, a, b } = twoWeights();
    const outs = [a.add(b), a.sub(b), a.mul(b), b.div(a)];
    expect(nodes(g)).toEqual([
      "add.add = add(a, b) {} [undefined] : [2,3]",
      "sub.sub = sub(a, b) {} [undefined] : [2,3]",
      "mul.mul = mul(a, b) {} [undefined] : [2,3]",
      "div.div = div(b, a) {} [undefined] : [2,3]",
    ]);
    for (const t of outs) {
      expect(t).toBeInstanceOf(Tensor);
      expect(t.graph).toBe(g);
      expect(t.scope).toBeUndefined();
    }
    expect(outs.map((t) => t.id)).toEqual(g.nodes.map((n) => n.outputs[0]));
    const v = evaluate(
      g,
      new Map([
        [a.id, A],
        [b.id, B],
      ]),
    );
    expect(v.get(outs[0].id)).toEqual([3, 2, 0, 12, 0, -0.75]);
    expect(v.get(outs[1].id)).toEqual([-1, -6, 1, -4, 6, -1.25]);
    expect(v.get(outs[2].id)).toEqual([2, -8, -0.25, 32, -9, -0.25]);
    expect(v.get(outs[3].id)).toEqual([2, -2, -1, 2, -1, -0.25]);
  });

  it("scale, softcap: the factor and the cap as attributes; x · factor and cap · tanh(x / cap)", () => {
    const { g, a } = twoWeights();
    const s = a.scale(3);
    const c = a.softcap(2);
    expect(nodes(g)).toEqual([
      'scale.scale = scale(a) {"factor":3} [undefined] : [2,3]',
      'softcap.softcap = softcap(a) {"cap":2} [undefined] : [2,3]',
    ]);
    const v = evaluate(g, new Map([[a.id, A]]));
    expect(v.get(s.id)).toEqual([3, -6, 1.5, 12, 9, -3]);
    close(
      v.get(c.id)!,
      A.map((x) => 2 * Math.tanh(x / 2)),
    );
  });

  it("silu, tanh, sigmoid, exp, gelu: unary nodes; gelu is the tanh approximation unless asked for the exact erf", () => {
    const { g, a } = twoWeights();
    const [si, th, sg, ex, g0, gt, gn] = [
      a.silu(),
      a.tanh(),
      a.sigmoid(),
      a.exp(),
      a.gelu(),
      a.gelu("tanh"),
      a.gelu("none"),
    ];
    expect(nodes(g)).toEqual([
      "silu.silu = silu(a) {} [undefined] : [2,3]",
      "tanh.tanh = tanh(a) {} [undefined] : [2,3]",
      "sigmoid.sigmoid = sigmoid(a) {} [undefined] : [2,3]",
      "exp.exp = exp(a) {} [undefined] : [2,3]",
      'gelu.gelu = gelu(a) {"approximate":"tanh"} [undefined] : [2,3]',
      'gelu.gelu = gelu(a) {"approximate":"tanh"} [undefined] : [2,3]',
      'gelu.gelu = gelu(a) {"approximate":"none"} [undefined] : [2,3]',
    ]);
    const v = evaluate(g, new Map([[a.id, A]]));
    const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));
    close(
      v.get(si.id)!,
      A.map((x) => x * sigmoid(x)),
    );
    close(v.get(th.id)!, A.map(Math.tanh));
    close(v.get(sg.id)!, A.map(sigmoid));
    close(v.get(ex.id)!, A.map(Math.exp));
    // gelu(1): tanh form 0.5·(1 + tanh(√(2/π)·(1 + 0.044715))) = 0.841192; erf form 0.5·(1 + erf(1/√2)) = 0.841345.
    expect(v.get(g0.id)![0]).toBeCloseTo(0.841192, 5);
    expect(v.get(gt.id)).toEqual(v.get(g0.id));
    expect(v.get(gn.id)![0]).toBeCloseTo(0.841345, 5);
  });

  it("split: one node with several outputs (name.i), each a Tensor in the source's scope, the last dim cut by sizes", () => {
    const { g, a } = twoWeights();
    const scoped = new Tensor(g, a.id, "blk");
    const parts = scoped.split([1, 2]);
    expect(nodes(g)).toEqual(['blk.split.0, blk.split.1 = split(a) {"sizes":[1,2]} [blk] : [2,1]']);
    expect(parts.map((p) => shapeStr(p.shape))).toEqual(["[2,1]", "[2,2]"]);
    expect(parts.map((p) => p.scope)).toEqual(["blk", "blk"]);
    expect(parts.map((p) => p.id)).toEqual(g.nodes[0].outputs);
    const v = evaluate(g, new Map([[a.id, A]]));
    expect(v.get(parts[0].id)).toEqual([1, 4]);
    expect(v.get(parts[1].id)).toEqual([-2, 0.5, 3, -1]);
  });

  it("shape is the value's; features is its static last dim, refused for a symbolic one", () => {
    const { m, a } = twoWeights();
    expect(a.shape).toEqual([2, 3]);
    expect(a.features).toBe(3);
    expect(m.param("w", [5, 7, 11], INIT).features).toBe(11);
    expect(m.inputIds.shape).toEqual([{ sym: "num_tokens", max: 4 }]);
    expect(() => m.inputIds.features).toThrow(new Error("feature dim must be static"));
  });
});

describe("apply and applyMany", () => {
  it("scope: the one given, else the first present input's; the outputs carry it", () => {
    const { g, a, b } = twoWeights();
    const x = new Tensor(g, a.id, "first");
    const y = new Tensor(g, b.id, "second");
    const inherited = x.add(y);
    const given = apply("mul", [x, y], {}, "given");
    const linOut = apply("linear", [new Tensor(g, a.id, "lin"), y, null], { activation: "none" });
    const [s0, s1] = applyMany("split", [y], { sizes: [2, 1] }, "cut");
    expect(nodes(g)).toEqual([
      "first.add = add(a, b) {} [first] : [2,3]",
      "given.mul = mul(a, b) {} [given] : [2,3]",
      'lin.linear = linear(a, b, null) {"activation":"none"} [lin] : [2,2]',
      'cut.split.0, cut.split.1 = split(b) {"sizes":[2,1]} [cut] : [2,2]',
    ]);
    expect([inherited.scope, given.scope, linOut.scope, s0.scope, s1.scope]).toEqual([
      "first",
      "given",
      "lin",
      "cut",
      "cut",
    ]);
    for (const t of [inherited, given, linOut, s0, s1]) expect(t.graph).toBe(g);
  });

  it("the node and its outputs go into the inputs' graph, not another module's", () => {
    const m1 = new Module("f32", LIMITS);
    const m2 = new Module("f32", LIMITS);
    const x = m2.param("x", [2, 3], INIT);
    const w = m2.param("w", [4, 3], INIT);
    const y = apply("linear", [x, w, null], { activation: "none" }, "proj");
    expect(m1.graph.nodes).toEqual([]);
    expect(nodes(m2.graph)).toEqual([
      'proj.linear = linear(x, w, null) {"activation":"none"} [proj] : [2,4]',
    ]);
    expect(y.graph).toBe(m2.graph);
  });

  it("apply refuses an op of several outputs, naming the count; applyMany refuses no inputs at all", () => {
    const { g, a } = twoWeights();
    expect(() => apply("split", [a], { sizes: [1, 1, 1] })).toThrow(
      new Error("split has 3 outputs; use applyMany"),
    );
    expect(() => apply("split", [a], { sizes: [3] })).not.toThrow();
    expect(() => applyMany("add", [])).toThrow(new Error("add: no inputs"));
    expect(() => apply("silu", [null])).toThrow(new Error("silu: no inputs"));
    const before = g.nodes.length;
    // The first present input need not be the first one: an absent required input is then the op's own refusal.
    expect(() => apply("add", [null, a])).toThrow(new Error('add: required input "a" missing'));
    expect(g.nodes.length).toBe(before);
  });
});
