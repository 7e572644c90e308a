// Small graphs built by hand for the fusion passes' tests (qkv, attention, gate/up): one attention
// block or one gated MLP over 3 tokens, with knobs for the cases a pass must refuse. Widths are
// small (head_dim 4) so that every shape in a test can be worked out by hand.
import { addInput, addNode, addWeight, emptyGraph } from "../../src/ir/builder.ts";
import type { Attrs, DType, Graph, Node } from "../../src/ir/types.ts";
import { writer } from "./helpers.ts";

export const TOKENS = 3;
export const HIDDEN = 8;

/** A checkpoint weight of one part, as the model files declare them. */
export function ckptWeight(g: Graph, name: string, shape: number[], dtype: DType = "f32"): number {
  return addWeight(g, name, dtype, shape, {
    kind: "checkpoint",
    parts: [{ name, shape, transforms: [] }],
    transforms: [],
    init: { mean: 0, scale: 0.02 },
  }).id;
}

export function graphWithX(): { g: Graph; x: number; positions: number } {
  const g = emptyGraph({ numLayers: 1, numKvHeads: 1, headDim: 4 });
  const positions = addInput(g, "positions", "i32", [TOKENS]).id;
  const x = addInput(g, "x", "f32", [TOKENS, HIDDEN]).id;
  return { g, x, positions };
}

export interface AttnOptions {
  /** Rope on q and k (default), on one of them, or neither. */
  rope?: "both" | "q" | "k" | "none";
  /** Which projections get a bias. */
  bias?: [boolean, boolean, boolean];
  /** Scope prefix of the block ("m.l0.attn"). */
  scope?: string;
}

export interface AttnBlock {
  g: Graph;
  x: number;
  positions: number;
  invFreq: number;
  /** The q, k, v linears, the ropes (q, k; absent ones undefined) and the attention node. */
  lin: [Node, Node, Node];
  rq?: Node;
  rk?: Node;
  attn: Node;
}

// 2 query heads, 1 KV head, head_dim 4: q is 8 wide, k and v 4.
export const HEADS = 2;
export const KV_HEADS = 1;
export const HEAD_DIM = 4;

/** x → q/k/v linears (→ rope on q and k) → attention, scopes as the llama model file gives them. */
export function attentionBlock(o: AttnOptions = {}): AttnBlock {
  const { g, x, positions } = graphWithX();
  const rope = o.rope ?? "both";
  const s = o.scope ?? "m.l0.attn";
  const invFreq = ckptWeight(g, "rope.inv_freq", [HEAD_DIM / 2]);
  const widths = [HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM];
  const outs = (["q", "k", "v"] as const).map((p, i) => {
    const w = ckptWeight(g, `${s}.${p}_proj.weight`, [widths[i], HIDDEN]);
    const b = o.bias?.[i] ? ckptWeight(g, `${s}.${p}_proj.bias`, [widths[i]]) : null;
    return addNode(g, "linear", [x, w, b], { activation: "none" }, { scope: `${s}.${p}_proj` })[0];
  });
  const ropeOn = (i: number, heads: number) =>
    addNode(
      g,
      "rope",
      [outs[i], positions, invFreq],
      { num_heads: heads, head_dim: HEAD_DIM, rotary_dim: HEAD_DIM, style: "neox" },
      { scope: g.nodes[i].scope },
    )[0];
  const q = rope === "both" || rope === "q" ? ropeOn(0, HEADS) : outs[0];
  const k = rope === "both" || rope === "k" ? ropeOn(1, KV_HEADS) : outs[1];
  const [y] = addNode(
    g,
    "attention",
    [q, k, outs[2]],
    { layer: 0, num_heads: HEADS, num_kv_heads: KV_HEADS, head_dim: HEAD_DIM, scale: 0.5 },
    { scope: `${s}.q_proj` },
  );
  g.outputs = { y };
  const lin = g.nodes.slice(0, 3) as [Node, Node, Node];
  return {
    g,
    x,
    positions,
    invFreq,
    lin,
    rq: writer(g, q) === lin[0] ? undefined : writer(g, q),
    rk: writer(g, k) === lin[1] ? undefined : writer(g, k),
    attn: g.nodes[g.nodes.length - 1],
  };
}

export interface MlpOptions {
  /** silu (default), gelu (tanh unless `approximate` says otherwise). */
  act?: "silu" | "gelu";
  approximate?: string;
  /** mul(act(gate), up) (default) or mul(up, act(gate)). */
  upFirst?: boolean;
  bias?: [boolean, boolean];
  scope?: string;
}

export interface MlpBlock {
  g: Graph;
  x: number;
  gate: Node;
  up: Node;
  act: Node;
  mul: Node;
}

export const MLP_WIDTH = 6;

/** x → gate / up linears → mul(act(gate), up), scopes as the llama model file gives them. */
export function gatedMlp(o: MlpOptions = {}): MlpBlock {
  const { g, x } = graphWithX();
  const s = o.scope ?? "m.l0.mlp";
  const [gl, ul] = (["gate", "up"] as const).map((p, i) => {
    const w = ckptWeight(g, `${s}.${p}_proj.weight`, [MLP_WIDTH, HIDDEN]);
    const b = o.bias?.[i] ? ckptWeight(g, `${s}.${p}_proj.bias`, [MLP_WIDTH]) : null;
    return addNode(g, "linear", [x, w, b], { activation: "none" }, { scope: `${s}.${p}_proj` })[0];
  });
  const attrs: Attrs = o.approximate === undefined ? {} : { approximate: o.approximate };
  const [a] = addNode(g, o.act ?? "silu", [gl], attrs, { scope: `${s}.gate_proj` });
  const [y] = addNode(g, "mul", o.upFirst ? [ul, a] : [a, ul], {}, { scope: `${s}.gate_proj` });
  g.outputs = { y };
  const [gate, up, act, mul] = g.nodes;
  return { g, x, gate, up, act, mul };
}

export interface PackedOptions {
  rope?: "both" | "q" | "k" | "none";
  /** Query and KV heads (default 2 and 1; head_dim 4). */
  heads?: [number, number];
  /** The split's sizes (default the heads' widths). */
  sizes?: number[];
  /** Which split outputs the attention reads as q, k, v (default 0, 1, 2). */
  order?: [number, number, number];
  /** Rope attributes of q and k, over the defaults (the heads, rotary_dim 4, neox). */
  ropeAttrs?: [Record<string, unknown>, Record<string, unknown>];
}

export interface PackedBlock {
  g: Graph;
  x: number;
  positions: number;
  invFreq: number;
  qkv: Node;
  split: Node;
  rq?: Node;
  rk?: Node;
  attn: Node;
}

/**
 * What qkv-fusion leaves: x → linear(x, W_qkv) → split → (rope on q and k) → attention, scoped as
 * on tiny-llama (split under qkv_proj, the ropes and attention under q_proj / k_proj).
 */
export function packedBlock(o: PackedOptions = {}): PackedBlock {
  const { g, x, positions } = graphWithX();
  const [nH, nKv] = o.heads ?? [HEADS, KV_HEADS];
  const sizes = o.sizes ?? [nH * HEAD_DIM, nKv * HEAD_DIM, nKv * HEAD_DIM];
  const s = "m.l0.attn";
  const invFreq = ckptWeight(g, "rope.inv_freq", [HEAD_DIM / 2]);
  const w = ckptWeight(g, `${s}.qkv_proj.weight`, [sizes.reduce((a, b) => a + b, 0), HIDDEN]);
  const [y] = addNode(g, "linear", [x, w, null], { activation: "none" }, { scope: `${s}.qkv_proj` });
  const parts = addNode(g, "split", [y], { sizes }, { scope: `${s}.qkv_proj` });
  const [qi, ki, vi] = o.order ?? [0, 1, 2];
  const rope = o.rope ?? "both";
  const ropeOn = (id: number, heads: number, proj: string, extra: Record<string, unknown> = {}) =>
    addNode(
      g,
      "rope",
      [id, positions, invFreq],
      { num_heads: heads, head_dim: HEAD_DIM, rotary_dim: HEAD_DIM, style: "neox", ...extra },
      { scope: `${s}.${proj}` },
    )[0];
  const q = rope === "both" || rope === "q" ? ropeOn(parts[qi], nH, "q_proj", o.ropeAttrs?.[0]) : parts[qi];
  const k = rope === "both" || rope === "k" ? ropeOn(parts[ki], nKv, "k_proj", o.ropeAttrs?.[1]) : parts[ki];
  const [out] = addNode(
    g,
    "attention",
    [q, k, parts[vi]],
    { layer: 0, num_heads: nH, num_kv_heads: nKv, head_dim: HEAD_DIM, scale: 0.5 },
    { scope: `${s}.q_proj` },
  );
  g.outputs = { y: out };
  const rq = writer(g, q);
  const rk = writer(g, k);
  return {
    g,
    x,
    positions,
    invFreq,
    qkv: g.nodes[0],
    split: g.nodes[1],
    rq: rq?.op === "rope" ? rq : undefined,
    rk: rk?.op === "rope" ? rk : undefined,
    attn: g.nodes[g.nodes.length - 1],
  };
}
