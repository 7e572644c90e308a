// Where the elementwise-chain fusions stop (passes/epilogue-fusion.ts postChainPattern, passes/norm-chain-fusion.ts),
// on small hand-built graphs, each checked against the reference executor of the unfused graph.
import { describe, expect, it } from "vitest";
import { epilogueFusion } from "../../passes/epilogue-fusion.ts";
import { normChainFusion } from "../../passes/norm-chain-fusion.ts";
import { PassLog, passContext } from "../../passes/pass.ts";
import { addInput, addNode, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { Graph } from "../../src/ir/types.ts";
import { getOp, HostTensor } from "../../src/ops/index.ts";
import { testBuild } from "./helpers.ts";

const T = { sym: "num_tokens", max: 8 } as const;

function graph(build: (g: Graph, x: number, w: number, nw: number) => number): Graph {
  const g = emptyGraph({ numLayers: 0, numKvHeads: 1, headDim: 1 });
  const x = addInput(g, "x", "f32", [T, 4]).id;
  const data = (n: number, k: number) => Array.from({ length: n }, (_, i) => Math.cos(i * 0.7 + k));
  const w = addWeight(g, "lin.weight", "f32", [4, 4], { kind: "constant", data: data(16, 1) }).id;
  const nw = addWeight(g, "norm.weight", "f32", [4], { kind: "constant", data: data(4, 2) }).id;
  g.outputs.y = build(g, x, w, nw);
  return g;
}

/** Runs a graph of linear / norm / unary / add nodes on fixed inputs (no KV cache, no context needed). */
function run(g: Graph): Float32Array {
  const vals = new Map<number, HostTensor>();
  vals.set(
    g.inputs.x,
    new HostTensor(
      [3, 4],
      Float32Array.from({ length: 12 }, (_, i) => Math.sin(i + 1) * 2),
    ),
  );
  for (const [id, v] of g.values)
    if (v.recipe?.kind === "constant")
      vals.set(id, new HostTensor(v.shape as number[], Float32Array.from(v.recipe.data)));
  for (const n of g.nodes) {
    const outs = getOp(n.op).ref(
      n.inputs.map((i) => (i === null ? null : vals.get(i)!)),
      n.attrs,
      {} as never,
    );
    n.outputs.forEach((o, i) => vals.set(o, outs[i]));
  }
  return vals.get(g.outputs.y)!.f32;
}

function fuse(g: Graph) {
  const log = new PassLog();
  const ctx = passContext(testBuild(), log);
  const out = normChainFusion.run(epilogueFusion.run(g, ctx), ctx);
  return { out, log, ops: out.nodes.map((n) => n.op) };
}

const same = (a: Graph, b: Graph) => expect(Array.from(run(b))).toEqual(Array.from(run(a)));

describe("elementwise chain fusion boundaries", () => {
  it("a chain and then a residual fold into one linear: post(x·wᵀ) + r", () => {
    const g = graph((g, x, w) => {
      const [l] = addNode(g, "linear", [x, w], {});
      const [s] = addNode(g, "scale", [l], { factor: 0.5 });
      const [c] = addNode(g, "softcap", [s], { cap: 2 });
      return addNode(g, "add", [c, x], {})[0];
    });
    const { out, ops } = fuse(g);
    expect(ops).toEqual(["linear"]);
    expect(out.nodes[0].attrs.post).toEqual({ ops: ["scale", "softcap"], args: [0.5, 2] });
    expect(out.nodes[0].inputs[3]).toBe(g.inputs.x);
    same(g, out);
  });

  it("no chain into a linear that already adds its residual, no activation after a chain", () => {
    const g = graph((g, x, w) => {
      const [l] = addNode(g, "linear", [x, w, null, x], {});
      const [t] = addNode(g, "tanh", [l], {}); // tanh(x·wᵀ + r): the residual would have to move after it
      const [l2] = addNode(g, "linear", [t, w], {});
      const [s] = addNode(g, "exp", [l2], {});
      return addNode(g, "silu", [s], {})[0]; // silu(exp(·)): activations run before the chain
    });
    const { out, ops } = fuse(g);
    expect(ops).toEqual(["linear", "tanh", "linear", "silu"]);
    expect(out.nodes[2].attrs.post).toEqual({ ops: ["exp"], args: [0] });
    same(g, out);
  });

  it("a linear whose output has another reader keeps it", () => {
    const g = graph((g, x, w) => {
      const [l] = addNode(g, "linear", [x, w], {});
      const [s] = addNode(g, "sigmoid", [l], {});
      return addNode(g, "mul", [s, l], {})[0];
    });
    expect(fuse(g).ops).toEqual(["linear", "sigmoid", "mul"]);
  });

  it("at most 4 steps in a chain (the CUDA runtime's capacity); the fifth stays its own op, noted", () => {
    const g = graph((g, x, w) => {
      let h = addNode(g, "linear", [x, w], {})[0];
      for (let i = 0; i < 5; i++) h = addNode(g, "scale", [h], { factor: 1.1 })[0];
      return h;
    });
    const { out, ops, log } = fuse(g);
    expect(ops).toEqual(["linear", "scale"]);
    expect(log.notes.some((n) => n.includes("already holds 4 ops"))).toBe(true);
    same(g, out);
  });

  it("norms: pre on x and post on y (a chain of three after rms_norm)", () => {
    const g = graph((g, x, _w, nw) => {
      const [t] = addNode(g, "tanh", [x], {});
      const [n1] = addNode(g, "rms_norm", [t, nw], { eps: 1e-6, weight_offset: 1 });
      const [s] = addNode(g, "scale", [n1], { factor: 3 });
      const [e] = addNode(g, "exp", [s], {});
      const [sg] = addNode(g, "sigmoid", [e], {});
      const [n2] = addNode(g, "layer_norm", [sg, nw], { eps: 1e-5 });
      return addNode(g, "add", [n2, sg], {})[0];
    });
    const { out, ops, log } = fuse(g);
    expect(ops).toEqual(["rms_norm", "layer_norm", "add"]);
    expect(out.nodes[0].attrs).toMatchObject({
      pre: { ops: ["tanh"], args: [0] },
      post: { ops: ["scale", "exp", "sigmoid"], args: [3, 0, 0] },
    });
    expect(log.matches.map((m) => m.pattern).sort()).toEqual([
      "norm-post",
      "norm-post",
      "norm-post",
      "norm-pre",
    ]);
    same(g, out);
  });

  it("norms: a unary op whose output has another reader stays its own op (before or after the norm)", () => {
    const g = graph((g, x, _w, nw) => {
      const [t] = addNode(g, "tanh", [x], {});
      const [n] = addNode(g, "rms_norm", [t, nw], { eps: 1e-6 });
      const [s] = addNode(g, "scale", [n], { factor: 2 });
      return addNode(g, "add", [addNode(g, "add", [s, t], {})[0], n], {})[0];
    });
    expect(fuse(g).ops).toEqual(["tanh", "rms_norm", "scale", "add", "add"]);
  });

  it("add_rms_norm's pre applies to x before the residual add; the sum output is pre(x) + r", () => {
    const g = graph((g, x, w, nw) => {
      const [l] = addNode(g, "linear", [x, w], {});
      const [r] = addNode(g, "linear", [l, w], {});
      const [s] = addNode(g, "softcap", [x], { cap: 1.5 });
      const [y, sum] = addNode(g, "add_rms_norm", [s, r, nw], { eps: 1e-6 });
      return addNode(g, "add", [y, sum], {})[0];
    });
    const { out, ops } = fuse(g);
    expect(ops).toEqual(["linear", "linear", "add_rms_norm", "add"]);
    same(g, out);
  });

  it("norms: two pre steps keep their order (the inner one first), at most 4 steps on either side; a unary op on add_rms_norm's sum stays", () => {
    const g = graph((g, x, _w, nw) => {
      const [a] = addNode(g, "scale", [x], { factor: 0.5 });
      const [b] = addNode(g, "softcap", [a], { cap: 2 });
      let h = addNode(g, "rms_norm", [b, nw], { eps: 1e-6 })[0];
      for (let i = 0; i < 5; i++) h = addNode(g, "scale", [h], { factor: 1.5 })[0];
      return h;
    });
    const { out, ops } = fuse(g);
    expect(ops).toEqual(["rms_norm", "scale"]);
    expect(out.nodes[0].attrs).toMatchObject({
      pre: { ops: ["scale", "softcap"], args: [0.5, 2] },
      post: { ops: ["scale", "scale", "scale", "scale"], args: [1.5, 1.5, 1.5, 1.5] },
    });
    same(g, out);
    // Five unary ops before a norm: four go into its pre chain, the first stays.
    const g2 = graph((g, x, _w, nw) => {
      let h = x;
      for (let i = 0; i < 5; i++) h = addNode(g, "scale", [h], { factor: 1 + i / 10 })[0];
      return addNode(g, "rms_norm", [h, nw], { eps: 1e-6 })[0];
    });
    const f2 = fuse(g2);
    expect(f2.ops).toEqual(["scale", "rms_norm"]);
    expect(f2.out.nodes[1].attrs).toMatchObject({
      pre: { ops: ["scale", "scale", "scale", "scale"], args: [1.1, 1.2, 1.3, 1.4] },
    });
    same(g2, f2.out);
    // tanh of the sum (add_rms_norm's second output) is not a post step of the normalised output.
    const g3 = graph((g, x, w, nw) => {
      const [r] = addNode(g, "linear", [x, w], {});
      const [y, sum] = addNode(g, "add_rms_norm", [x, r, nw], { eps: 1e-6 });
      const [t] = addNode(g, "tanh", [sum], {});
      return addNode(g, "add", [y, t], {})[0];
    });
    const f3 = fuse(g3);
    expect(f3.ops).toEqual(["linear", "add_rms_norm", "tanh", "add"]);
    same(g3, f3.out);
  });
});
