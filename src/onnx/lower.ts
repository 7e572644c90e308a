// How each op of the registry becomes standard ONNX (opset 17) nodes. One entry per op; values are the
// IR's packed [T, C] tensors of one sequence (batch 1), the KV cache is explicit past/present tensors.
import type { Node } from "../ir/types.ts";
import { chainOf } from "../ops/ew-chain.ts";
import { moeAttrs } from "../ops/moe.ts";
import { ELEM, type Elem, type OnnxBuilder } from "./builder.ts";

export interface LowerCtx {
  b: OnnxBuilder;
  /** Element type of activations (the engine dtype). */
  act: Elem;
  tp: number;
  /** ONNX name of an IR value (declaring weights as initializers on first use). */
  name(id: number): string;
  set(id: number, name: string): void;
  /** Static last dim of an IR value. */
  width(id: number): number;
  /** The step's positions, int64 [T]. */
  positions(): string;
  /** Past / present K and V of a KV-cache layer: [1, kv_heads, seq, head_dim]. */
  kv(layer: number): { pastKey: string; pastValue: string; presentKey: string; presentValue: string };
  /** cos and sin [T, R/2] in the activation type, for an inv_freq weight at the step's positions. */
  cosSin(invFreq: number, positions: number): { cos: string; sin: string };
}

type Lowering = (c: LowerCtx, n: Node) => void;

const num = (n: Node, k: string, d?: number): number => {
  const v = n.attrs[k];
  if (typeof v === "number") return v;
  if (d !== undefined && v === undefined) return d;
  throw new Error(`ONNX export: ${n.op} needs a numeric attribute ${k}`);
};

/** A scalar constant, in the activation type unless told (fp32 inside inF32). */
function scalar(c: LowerCtx, v: number, elem: Elem = c.act): string {
  return c.b.constant([v], [], elem);
}

/** Runs fn in fp32 when activations are half precision (norms, softmax), casting back after. */
function inF32(c: LowerCtx, xs: string[], fn: (xs: string[]) => string): string {
  if (c.act === ELEM.f32) return fn(xs);
  const y = fn(xs.map((x) => c.b.op1("Cast", [x], { to: { i: ELEM.f32 } }, ELEM.f32)));
  return c.b.op1("Cast", [y], { to: { i: c.act } }, c.act);
}

export function activation(c: LowerCtx, x: string, act: string): string {
  const { b } = c;
  switch (act) {
    case "none":
      return x;
    case "silu":
      return b.op1("Mul", [x, b.op1("Sigmoid", [x])]);
    case "gelu_tanh": {
      // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
      const x3 = b.op1("Mul", [b.op1("Mul", [x, x]), x]);
      const inner = b.op1("Mul", [
        b.op1("Add", [x, b.op1("Mul", [x3, scalar(c, 0.044715)])]),
        scalar(c, Math.sqrt(2 / Math.PI)),
      ]);
      const t = b.op1("Add", [b.op1("Tanh", [inner]), scalar(c, 1)]);
      return b.op1("Mul", [b.op1("Mul", [x, t]), scalar(c, 0.5)]);
    }
    case "gelu": {
      const e = b.op1("Add", [b.op1("Erf", [b.op1("Mul", [x, scalar(c, Math.SQRT1_2)])]), scalar(c, 1)]);
      return b.op1("Mul", [b.op1("Mul", [x, e]), scalar(c, 0.5)]);
    }
    default:
      throw new Error(`ONNX export: activation ${act}`);
  }
}

/** The unary elementwise ops (ew-chain.ts's UNARY) in ONNX: standalone, and as the chains fusion folds in. */
const UNARY_ONNX: Record<string, (c: LowerCtx, x: string, arg: number) => string> = {
  tanh: (c, x) => c.b.op1("Tanh", [x]),
  sigmoid: (c, x) => c.b.op1("Sigmoid", [x]),
  exp: (c, x) => c.b.op1("Exp", [x]),
  scale: (c, x, factor) => c.b.op1("Mul", [x, scalar(c, factor)]),
  softcap: (c, x, cap) =>
    c.b.op1("Mul", [c.b.op1("Tanh", [c.b.op1("Mul", [x, scalar(c, 1 / cap)])]), scalar(c, cap)]),
};

/** x through a node's pre / post chain (x itself when it has none): the fused ops lowered back to ONNX ops. */
function chain(c: LowerCtx, x: string, n: Node, key: "pre" | "post"): string {
  const ch = chainOf(n.attrs, key);
  return ch.ops.reduce((y, op, i) => UNARY_ONNX[op](c, y, ch.args[i]), x);
}

function linearEpilogue(c: LowerCtx, n: Node, y: string): void {
  let out = chain(c, activation(c, y, String(n.attrs.activation ?? "none")), n, "post");
  const residual = n.inputs[3];
  if (residual != null) out = c.b.op1("Add", [out, c.name(residual)]);
  c.set(n.outputs[0], out);
}

/** A norm's weight input (id) and its weight_offset attribute (Gemma's 1 + w). */
interface NormWeight {
  id: number;
  offset: number;
}

function normWeight(n: Node, slot: number): NormWeight {
  return { id: n.inputs[slot]!, offset: num(n, "weight_offset", 0) };
}

/** w + offset on the fp32 weight (inside inF32), as the reference adds it: in fp32, rounded once with the output. */
function offsetWeight(c: LowerCtx, w: string, offset: number): string {
  return offset === 0 ? w : c.b.op1("Add", [w, scalar(c, offset, ELEM.f32)]);
}

function rmsNorm(c: LowerCtx, x: string, nw: NormWeight, eps: number): string {
  return inF32(c, [x, c.name(nw.id)], ([x, w]) => {
    const { b } = c;
    const ms = b.op1("ReduceMean", [b.op1("Mul", [x, x])], { axes: { ints: [-1] }, keepdims: { i: 1 } });
    const rms = b.op1("Sqrt", [b.op1("Add", [ms, b.constant([eps], [], ELEM.f32)])]);
    return b.op1("Mul", [b.op1("Div", [x, rms]), offsetWeight(c, w, nw.offset)]);
  });
}

/**
 * LayerNormalization in fp32 as well: in half precision ONNX rounds the normalised value, the product with the
 * weight and the sum with the bias to the activation type in turn (the reference rounds once).
 */
function layerNorm(c: LowerCtx, x: string, nw: NormWeight, bias: string, eps: number): string {
  return inF32(c, [x, c.name(nw.id), bias], ([x, w, bias]) =>
    c.b.op1("LayerNormalization", [x, offsetWeight(c, w, nw.offset), bias], {
      axis: { i: -1 },
      epsilon: { f: eps },
    }),
  );
}

/** Splits the last dim of a [T, Σsizes] tensor. */
function splitLast(c: LowerCtx, x: string, sizes: number[]): string[] {
  return c.b.op("Split", [x, c.b.i64(sizes)], { axis: { i: -1 } }, { outputs: sizes.length });
}

/** Rotary embedding of x [T, heads·D] (GPT-NeoX half rotation or GPT-J interleaved pairs). */
function rope(
  c: LowerCtx,
  x: string,
  heads: number,
  D: number,
  R: number,
  style: string,
  cs: { cos: string; sin: string },
): string {
  const { b } = c;
  const x3 = b.op1("Reshape", [x, b.i64([-1, heads, D])]);
  const [rot, pass] = R < D ? splitLast(c, x3, [R, D - R]) : [x3, null];
  let out: string;
  if (style === "neox") {
    const cos = b.op1("Unsqueeze", [cs.cos, b.i64([1])]); // [T, 1, R/2]
    const sin = b.op1("Unsqueeze", [cs.sin, b.i64([1])]);
    const [x1, x2] = splitLast(c, rot, [R / 2, R / 2]);
    const o1 = b.op1("Sub", [b.op1("Mul", [x1, cos]), b.op1("Mul", [x2, sin])]);
    const o2 = b.op1("Add", [b.op1("Mul", [x2, cos]), b.op1("Mul", [x1, sin])]);
    out = b.op1("Concat", [o1, o2], { axis: { i: -1 } });
  } else {
    const cos = b.op1("Unsqueeze", [cs.cos, b.i64([1, 3])]); // [T, 1, R/2, 1]
    const sin = b.op1("Unsqueeze", [cs.sin, b.i64([1, 3])]);
    const pairs = b.op1("Reshape", [rot, b.i64([0, heads, R / 2, 2])]);
    const [a, bb] = splitLast(c, pairs, [1, 1]);
    const o1 = b.op1("Sub", [b.op1("Mul", [a, cos]), b.op1("Mul", [bb, sin])]);
    const o2 = b.op1("Add", [b.op1("Mul", [bb, cos]), b.op1("Mul", [a, sin])]);
    out = b.op1("Reshape", [b.op1("Concat", [o1, o2], { axis: { i: -1 } }), b.i64([0, heads, R])]);
  }
  if (pass) out = b.op1("Concat", [out, pass], { axis: { i: -1 } });
  return b.op1("Reshape", [out, b.i64([0, heads * D])]);
}

/**
 * Causal attention of q [T, nH·D] over the layer's past K/V plus k, v [T, nKV·D]: present = past ‖ new
 * (along the sequence), and token t attends to cache slots 0..positions[t].
 */
function attention(c: LowerCtx, n: Node, q: string, k: string, v: string, positions: string): string {
  const { b } = c;
  const nH = num(n, "num_heads");
  const nKv = num(n, "num_kv_heads");
  const D = num(n, "head_dim");
  const scale = num(n, "scale");
  const kv = c.kv(num(n, "layer"));
  const heads = (x: string, h: number) =>
    b.op1("Transpose", [b.op1("Reshape", [x, b.i64([-1, h, D])])], { perm: { ints: [1, 0, 2] } }); // [h, T, D]
  const newK = b.op1("Unsqueeze", [heads(k, nKv), b.i64([0])]);
  const newV = b.op1("Unsqueeze", [heads(v, nKv), b.i64([0])]);
  b.op("Concat", [kv.pastKey, newK], { axis: { i: 2 } }, { names: [kv.presentKey] });
  b.op("Concat", [kv.pastValue, newV], { axis: { i: 2 } }, { names: [kv.presentValue] });
  const group = nH / nKv;
  const all = (x: string) => {
    const s = b.op1("Squeeze", [x, b.i64([0])]); // [nKV, P, D]
    if (group === 1) return s;
    const e = b.op1("Expand", [b.op1("Unsqueeze", [s, b.i64([1])]), b.i64([nKv, group, 1, 1])]);
    return b.op1("Reshape", [e, b.i64([nH, -1, D])]);
  };
  const kAll = all(kv.presentKey);
  const vAll = all(kv.presentValue);
  const scores = b.op1("MatMul", [heads(q, nH), b.op1("Transpose", [kAll], { perm: { ints: [0, 2, 1] } })]);
  // Mask: slot j is visible to token t when j ≤ positions[t].
  const P = b.op1("Gather", [b.op1("Shape", [kv.presentKey], {}, ELEM.i64), b.scalarI64(2)], {
    axis: { i: 0 },
  });
  const slots = b.op1("Range", [b.scalarI64(0), P, b.scalarI64(1)], {}, ELEM.i64);
  const visible = b.op1(
    "LessOrEqual",
    [b.op1("Unsqueeze", [slots, b.i64([0])]), b.op1("Unsqueeze", [positions, b.i64([1])])],
    {},
    ELEM.bool,
  );
  const probs = inF32(c, [scores], ([s]) => {
    const scaled = b.op1("Mul", [s, b.constant([scale], [], ELEM.f32)]);
    const masked = b.op1("Where", [visible, scaled, b.constant([-3.0e38], [], ELEM.f32)]);
    return b.op1("Softmax", [masked], { axis: { i: -1 } });
  });
  const out = b.op1("MatMul", [probs, vAll]); // [nH, T, D]
  return b.op1("Reshape", [b.op1("Transpose", [out], { perm: { ints: [1, 0, 2] } }), b.i64([-1, nH * D])]);
}

/**
 * Mixture of experts, densely: every expert runs on every token and the routing weights (zero for
 * the experts a token does not use) mask the sum. Exact, E/top_k times the FLOPs: fine for export.
 * Routing as the reference: softmax in fp32, TopK (ONNX puts the lower index first on equal values,
 * as torch.topk), renormalised when `normalize`. An expert-parallel rank keeps the columns of its
 * own experts [expert_start, expert_start + local_experts) of those weights.
 */
function moe(c: LowerCtx, n: Node): string {
  const { b } = c;
  if (n.attrs.quant !== undefined) throw new Error("ONNX export: quantised MoE experts are not exported yet");
  const K = num(n, "top_k");
  const { start, local: E } = moeAttrs(n.attrs);
  const [x, logits, w1, w3, w2] = n.inputs.slice(0, 5).map((id) => c.name(id!));
  const H = c.width(n.inputs[0]!);
  const I = c.width(n.inputs[4]!);
  // [T, E] routing weights: the top-k probabilities scattered into zeros.
  const dense = inF32(c, [logits], ([l]) => {
    const probs = b.op1("Softmax", [l], { axis: { i: -1 } });
    const [vals, idx] = b.op(
      "TopK",
      [probs, b.i64([K])],
      { axis: { i: -1 }, largest: { i: 1 }, sorted: { i: 1 } },
      { outputs: 2 },
    );
    b.elems.set(idx, ELEM.i64);
    b.elems.set(vals, ELEM.f32);
    const kept = num(n, "normalize", 1)
      ? b.op1("Div", [vals, b.op1("ReduceSum", [vals, b.i64([-1])], { keepdims: { i: 1 } })])
      : vals;
    const zeros = b.op1("Mul", [probs, b.constant([0], [], ELEM.f32)]);
    const all = b.op1("ScatterElements", [zeros, idx, kept], { axis: { i: 1 } });
    return E === num(n, "num_experts")
      ? all
      : b.op1("Slice", [all, b.i64([start]), b.i64([start + E]), b.i64([1])]);
  });
  // h = act(x·w1ᵀ) ⊙ x·w3ᵀ for all experts at once: [T, E·I] → [E, T, I].
  const h = b.op1("Mul", [
    activation(c, b.op1("Gemm", [x, w1], { transB: { i: 1 } }), String(n.attrs.activation ?? "silu")),
    b.op1("Gemm", [x, w3], { transB: { i: 1 } }),
  ]);
  const hE = b.op1("Transpose", [b.op1("Reshape", [h, b.i64([-1, E, I])])], { perm: { ints: [1, 0, 2] } });
  // w2 [E·H, I] → [E, I, H]; per expert [T, I]·[I, H] → [E, T, H].
  const w2E = b.op1("Transpose", [b.op1("Reshape", [w2, b.i64([E, H, I])])], { perm: { ints: [0, 2, 1] } });
  const y = b.op1("MatMul", [hE, w2E]);
  const wE = b.op1("Unsqueeze", [b.op1("Transpose", [dense], { perm: { ints: [1, 0] } }), b.i64([2])]);
  return b.op1("ReduceSum", [b.op1("Mul", [y, wE]), b.i64([0])], { keepdims: { i: 0 } });
}

const binary =
  (onnxOp: string): Lowering =>
  (c, n) =>
    c.set(n.outputs[0], c.b.op1(onnxOp, [c.name(n.inputs[0]!), c.name(n.inputs[1]!)]));

const unary =
  (f: (c: LowerCtx, x: string, n: Node) => string): Lowering =>
  (c, n) =>
    c.set(n.outputs[0], f(c, c.name(n.inputs[0]!), n));

export const LOWERINGS: Record<string, Lowering> = {
  embedding(c, n) {
    const { b } = c;
    const ids = c.name(n.inputs[0]!);
    const table = c.name(n.inputs[1]!);
    const start = num(n, "vocab_start", 0);
    if (c.tp === 1 && start === 0) {
      c.set(n.outputs[0], b.op1("Gather", [table, ids], { axis: { i: 0 } }, c.act));
      return;
    }
    // Vocab-parallel: ids outside this rank's rows give zeros.
    const rows = b.op1("Gather", [b.op1("Shape", [table], {}, ELEM.i64), b.scalarI64(0)], { axis: { i: 0 } });
    const local = b.op1("Sub", [ids, b.scalarI64(start)]);
    const inRange = b.op1(
      "And",
      [
        b.op1("GreaterOrEqual", [local, b.scalarI64(0)], {}, ELEM.bool),
        b.op1("Less", [local, rows], {}, ELEM.bool),
      ],
      {},
      ELEM.bool,
    );
    const safe = b.op1("Where", [inRange, local, b.scalarI64(0)]);
    const gathered = b.op1("Gather", [table, safe], { axis: { i: 0 } }, c.act);
    const mask = b.op1("Unsqueeze", [inRange, b.i64([1])]);
    c.set(n.outputs[0], b.op1("Where", [mask, gathered, scalar(c, 0)], {}, c.act));
  },
  linear(c, n) {
    const inputs = [c.name(n.inputs[0]!), c.name(n.inputs[1]!)];
    if (n.inputs[2] != null) inputs.push(c.name(n.inputs[2]));
    linearEpilogue(c, n, c.b.op1("Gemm", inputs, { transB: { i: 1 } }));
  },
  moe(c, n) {
    c.set(n.outputs[0], moe(c, n));
  },
  // Norms: the pre chain on x (before the residual add), the post chain on the normalised output.
  rms_norm(c, n) {
    const x = chain(c, c.name(n.inputs[0]!), n, "pre");
    c.set(n.outputs[0], chain(c, rmsNorm(c, x, normWeight(n, 1), num(n, "eps")), n, "post"));
  },
  add_rms_norm(c, n) {
    const sum = c.b.op1("Add", [chain(c, c.name(n.inputs[0]!), n, "pre"), c.name(n.inputs[1]!)]);
    c.set(n.outputs[0], chain(c, rmsNorm(c, sum, normWeight(n, 2), num(n, "eps")), n, "post"));
    c.set(n.outputs[1], sum);
  },
  layer_norm(c, n) {
    const [x, , bias] = n.inputs.map((i) => c.name(i!));
    const y = layerNorm(c, chain(c, x, n, "pre"), normWeight(n, 1), bias, num(n, "eps"));
    c.set(n.outputs[0], chain(c, y, n, "post"));
  },
  add_layer_norm(c, n) {
    const [x, r, , bias] = n.inputs.map((i) => c.name(i!));
    const sum = c.b.op1("Add", [chain(c, x, n, "pre"), r]);
    c.set(n.outputs[0], chain(c, layerNorm(c, sum, normWeight(n, 2), bias, num(n, "eps")), n, "post"));
    c.set(n.outputs[1], sum);
  },
  add: binary("Add"),
  sub: binary("Sub"),
  mul: binary("Mul"),
  div: binary("Div"),
  tanh: unary((c, x) => UNARY_ONNX.tanh(c, x, 0)),
  sigmoid: unary((c, x) => UNARY_ONNX.sigmoid(c, x, 0)),
  exp: unary((c, x) => UNARY_ONNX.exp(c, x, 0)),
  scale: unary((c, x, n) => UNARY_ONNX.scale(c, x, num(n, "factor"))),
  softcap: unary((c, x, n) => UNARY_ONNX.softcap(c, x, num(n, "cap"))),
  silu(c, n) {
    c.set(n.outputs[0], activation(c, c.name(n.inputs[0]!), "silu"));
  },
  gelu(c, n) {
    const tanh = (n.attrs.approximate ?? "tanh") === "tanh";
    c.set(n.outputs[0], activation(c, c.name(n.inputs[0]!), tanh ? "gelu_tanh" : "gelu"));
  },
  gated_act(c, n) {
    const half = c.width(n.inputs[0]!) / 2;
    const [gate, up] = splitLast(c, c.name(n.inputs[0]!), [half, half]);
    c.set(n.outputs[0], c.b.op1("Mul", [activation(c, gate, String(n.attrs.activation)), up]));
  },
  split(c, n) {
    const sizes = n.attrs.sizes as number[];
    splitLast(c, c.name(n.inputs[0]!), sizes).forEach((o, i) => c.set(n.outputs[i], o));
  },
  rope(c, n) {
    const cs = c.cosSin(n.inputs[2]!, n.inputs[1]!);
    const y = rope(
      c,
      c.name(n.inputs[0]!),
      num(n, "num_heads"),
      num(n, "head_dim"),
      num(n, "rotary_dim"),
      String(n.attrs.style),
      cs,
    );
    c.set(n.outputs[0], y);
  },
  attention(c, n) {
    const [q, k, v] = n.inputs.map((i) => c.name(i!));
    c.set(n.outputs[0], attention(c, n, q, k, v, c.positions()));
  },
  fused_attention(c, n) {
    const nH = num(n, "num_heads");
    const nKv = num(n, "num_kv_heads");
    const D = num(n, "head_dim");
    const R = num(n, "rotary_dim", 0);
    let [q, k, v] = splitLast(c, c.name(n.inputs[0]!), [nH * D, nKv * D, nKv * D]);
    if (R > 0) {
      const cs = c.cosSin(n.inputs[2]!, n.inputs[1]!);
      const style = String(n.attrs.rope_style);
      q = rope(c, q, nH, D, R, style, cs);
      k = rope(c, k, nKv, D, R, style, cs);
    }
    c.set(n.outputs[0], attention(c, n, q, k, v, c.name(n.inputs[1]!)));
  },
  gather_rows(c, n) {
    // ONNX exports return logits for every token of the step (as Hugging Face's exports do).
    c.set(n.outputs[0], c.name(n.inputs[0]!));
  },
  all_reduce(c, n) {
    // Collectives use ONNX Runtime's contrib ops (NCCL in its CUDA build); see README.
    c.set(n.outputs[0], c.b.op("AllReduce", [c.name(n.inputs[0]!)], {}, { domain: "com.microsoft" })[0]);
  },
  all_gather(c, n) {
    const attrs = { group_size: { i: c.tp }, axis: { i: 1 } };
    c.set(n.outputs[0], c.b.op("AllGather", [c.name(n.inputs[0]!)], attrs, { domain: "com.microsoft" })[0]);
  },
};
