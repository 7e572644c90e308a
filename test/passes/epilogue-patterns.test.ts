// Each epilogue-fusion pattern (passes/epilogue-fusion.ts) on graphs built by hand: what it folds, what
// it leaves alone, where the report places the match, and the names and inputs of the linears it writes.
import { describe, expect, it } from "vitest";
import { epilogueFusion } from "../../passes/epilogue-fusion.ts";
import { addInput, addNode, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { Attrs, Graph } from "../../src/ir/types.ts";
import { runPass, writer } from "./helpers.ts";

const T = { sym: "num_tokens", max: 8 } as const;

interface Built {
  g: Graph;
  x: number;
  /** A linear of x (or of `from`) in `scope`, with optional bias, residual and attrs; returns its output. */
  lin(scope: string, o?: { from?: number; bias?: boolean; residual?: number; attrs?: Attrs }): number;
}

function build(): Built {
  const g = emptyGraph({ numLayers: 0, numKvHeads: 1, headDim: 1 });
  const x = addInput(g, "x", "f32", [T, 4]).id;
  let k = 0;
  const lin: Built["lin"] = (scope, o = {}) => {
    const w = addWeight(g, `${scope}.weight`, "f32", [4, 4], {
      kind: "constant",
      data: new Array(16).fill(++k),
    }).id;
    const b = o.bias
      ? addWeight(g, `${scope}.bias`, "f32", [4], { kind: "constant", data: [1, 2, 3, 4] }).id
      : null;
    // Named apart from makeNode's default ("<scope>.linear"), so a rewrite that keeps the name shows.
    return addNode(g, "linear", [o.from ?? x, w, b, o.residual ?? null], o.attrs ?? {}, {
      scope,
      names: [`${scope}.out`],
    })[0];
  };
  return { g, x, lin };
}

function fuse(g: Graph) {
  const { out, log } = runPass(epilogueFusion, g);
  expect(log.failed).toBeUndefined();
  return { out, log, ops: out.nodes.map((n) => n.op) };
}

describe("activation into the linear", () => {
  it("silu and gelu (tanh by default) fold, keeping the linear's inputs, attrs and scope; reported at the linear", () => {
    const { g, lin } = build();
    const a = addNode(g, "silu", [lin("m.up", { bias: true, attrs: { tag: 7 } })], {}, { scope: "m.act" })[0];
    g.outputs.y = addNode(g, "gelu", [lin("m.down", { from: a })], {}, { scope: "m.act2" })[0];
    const { out, log, ops } = fuse(g);
    expect(ops).toEqual(["linear", "linear"]);
    expect(out.nodes[0]).toEqual({
      ...g.nodes[0],
      outputs: out.nodes[0].outputs,
      attrs: { tag: 7, activation: "silu" },
    });
    expect(out.nodes[1].attrs).toEqual({ activation: "gelu_tanh" });
    expect(out.nodes[1].inputs[0]).toBe(out.nodes[0].outputs[0]);
    expect(log.matches).toEqual([
      { pattern: "activation", where: "m.up" },
      { pattern: "activation", where: "m.down" },
    ]);
  });

  it("left alone: exact-erf gelu, a linear with an activation or a chain already, one with a residual", () => {
    const { g, x, lin } = build();
    const a = addNode(g, "gelu", [lin("a")], { approximate: "none" })[0];
    const b = addNode(g, "silu", [lin("b", { from: a, attrs: { activation: "gelu_tanh" } })])[0];
    const c = addNode(g, "silu", [lin("c", { from: b, attrs: { post: { ops: ["tanh"], args: [0] } } })])[0];
    g.outputs.y = addNode(g, "silu", [lin("d", { from: c, residual: x })])[0];
    const { ops, log } = fuse(g);
    expect(ops).toEqual(["linear", "gelu", "linear", "silu", "linear", "silu", "linear", "silu"]);
    expect(log.matches).toEqual([]);
  });

  it("a linear whose output has another reader, or is a graph output, keeps it", () => {
    const { g, lin } = build();
    const l = lin("a");
    const s = addNode(g, "silu", [l])[0];
    const l2 = lin("b", { from: s });
    g.outputs = {
      y: addNode(g, "add", [s, addNode(g, "silu", [l])[0]])[0],
      l2,
      t: addNode(g, "tanh", [l2])[0],
    };
    expect(fuse(g).log.matches).toEqual([]);
  });
});

describe("elementwise ops into the epilogue", () => {
  it("through a vocab-parallel lm_head's all_gather: the chain moves before it, the gather keeps its attrs", () => {
    const { g, lin } = build();
    const gathered = addNode(g, "all_gather", [lin("lm_head")], { tp: 2 }, { scope: "gather" })[0];
    g.outputs.logits = addNode(g, "softcap", [gathered], { cap: 30 })[0];
    const { out, log, ops } = fuse(g);
    expect(ops).toEqual(["linear", "all_gather"]);
    expect(out.nodes[0].attrs.post).toEqual({ ops: ["softcap"], args: [30] });
    expect(out.nodes[0].scope).toBe("lm_head");
    expect(out.nodes[1]).toEqual({
      op: "all_gather",
      inputs: out.nodes[0].outputs,
      outputs: [out.outputs.logits],
      attrs: { tp: 2 },
      scope: "gather",
    });
    expect(out.values.get(out.outputs.logits)!.shape).toEqual([T, 8]);
    expect(log.matches).toEqual([{ pattern: "elementwise-epilogue", where: "lm_head" }]);
  });

  it("not through an all_gather whose output has another reader", () => {
    const { g, lin } = build();
    const gathered = addNode(g, "all_gather", [lin("lm_head")], { tp: 2 })[0];
    g.outputs = { logits: addNode(g, "tanh", [gathered])[0], raw: gathered };
    const { ops, log } = fuse(g);
    expect(ops).toEqual(["linear", "all_gather", "tanh"]);
    expect(log.notes).toEqual([]); // not even tried (the splice would refuse to erase a graph output)
  });

  it("a fifth step stays its own op, noted, naming the linear ('a linear' without a scope)", () => {
    const { g, lin } = build();
    const full = { ops: ["tanh", "tanh", "tanh", "tanh"], args: [0, 0, 0, 0] };
    const a = addNode(g, "exp", [lin("m.proj", { attrs: { post: full } })])[0];
    const l = addNode(g, "linear", [a, g.nodes[0].inputs[1], null, null], { post: full })[0];
    g.outputs.y = addNode(g, "sigmoid", [l])[0];
    const { log, ops } = fuse(g);
    expect(ops).toEqual(["linear", "exp", "linear", "sigmoid"]);
    expect(log.notes).toEqual([
      "exp after m.proj left alone: the epilogue already holds 4 ops",
      "sigmoid after a linear left alone: the epilogue already holds 4 ops",
    ]);
  });
});

describe("residual adds", () => {
  it("add(r, linear) and add(linear, r) give the linear the residual, keeping its output's name", () => {
    const { g, x, lin } = build();
    const a = addNode(g, "add", [x, lin("m.o")])[0];
    g.outputs.y = addNode(g, "add", [lin("m.down", { from: a }), a])[0];
    const { out, log, ops } = fuse(g);
    expect(ops).toEqual(["linear", "linear"]);
    expect(out.nodes[0].inputs[3]).toBe(x);
    expect(out.nodes[1].inputs[3]).toBe(out.nodes[0].outputs[0]);
    expect(out.nodes.map((n) => out.values.get(n.outputs[0])!.name)).toEqual(["m.o.out", "m.down.out"]);
    expect(log.matches).toEqual([
      { pattern: "residual", where: "m.o" },
      { pattern: "residual", where: "m.down" },
    ]);
  });

  it("add of two linears: the later one adds the earlier one's output, whichever side each is on", () => {
    for (const swap of [false, true]) {
      const { g, lin } = build();
      const first = lin("first");
      const second = lin("second");
      g.outputs.y = addNode(g, "add", swap ? [second, first] : [first, second])[0];
      const { out, log } = fuse(g);
      expect(out.nodes.map((n) => n.scope)).toEqual(["first", "second"]);
      expect(out.nodes[1].inputs[3]).toBe(first);
      expect(out.nodes[0].inputs[3]).toBeNull();
      expect(log.matches).toEqual([{ pattern: "residual", where: "second" }]);
    }
  });

  it("a parallel block (attn + mlp + r) on either side of the outer add: the earlier linear adds r, the later adds that", () => {
    for (const [innerSwap, outerSwap] of [
      [false, false],
      [true, true],
    ]) {
      const { g, x, lin } = build();
      const attn = lin("h.attn");
      const mlp = lin("h.mlp");
      const inner = addNode(g, "add", innerSwap ? [mlp, attn] : [attn, mlp], {}, { scope: "h" })[0];
      g.outputs.y = addNode(g, "add", outerSwap ? [x, inner] : [inner, x], {}, { scope: "h" })[0];
      const { out, log } = fuse(g);
      expect(out.nodes.map((n) => [n.op, n.scope])).toEqual([
        ["linear", "h.attn"],
        ["linear", "h.mlp"],
      ]);
      expect(out.nodes[0].inputs[3]).toBe(x);
      expect(out.nodes[1].inputs[3]).toBe(out.nodes[0].outputs[0]);
      expect(out.nodes.map((n) => out.values.get(n.outputs[0])!.name)).toEqual(["h.attn.out", "h.mlp.out"]);
      expect(out.outputs.y).toBe(out.nodes[1].outputs[0]);
      expect(log.matches).toEqual([{ pattern: "parallel-residual", where: "h" }]);
    }
  });

  it("an inner add that is no parallel block (one operand not a linear) takes its residual itself", () => {
    const { g, x, lin } = build();
    const inner = addNode(g, "add", [lin("a"), x])[0];
    g.outputs.y = addNode(g, "add", [inner, x])[0];
    const { out, log, ops } = fuse(g);
    expect(ops).toEqual(["linear", "add"]);
    expect(out.nodes[0].inputs[3]).toBe(x);
    expect(log.matches.map((m) => m.pattern)).toEqual(["residual"]);
  });

  it("an add of two linears read by something other than an add is no parallel block: it takes a residual", () => {
    const { g, lin } = build();
    g.outputs.y = addNode(g, "silu", [addNode(g, "add", [lin("a"), lin("b")])[0]])[0];
    const { ops, log } = fuse(g);
    expect(ops).toEqual(["linear", "linear", "silu"]);
    expect(log.matches.map((m) => m.pattern)).toEqual(["residual"]);
  });

  it("no parallel block when the inner add has another reader; a linear with a residual gets no second", () => {
    const { g, x, lin } = build();
    const inner = addNode(g, "add", [lin("a"), lin("b")])[0];
    const outer = addNode(g, "add", [inner, x])[0];
    const withR = lin("c", { residual: x });
    g.outputs = { outer, inner, z: addNode(g, "add", [withR, x])[0] };
    const { out, log } = fuse(g);
    expect(log.matches.map((m) => m.pattern)).toEqual(["residual"]);
    expect(writer(out, out.outputs.inner)?.op).toBe("linear"); // a + b by b's residual
    expect(writer(out, out.outputs.z)?.op).toBe("add");
  });
});
