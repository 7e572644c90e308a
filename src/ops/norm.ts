import type { Attrs } from "../ir/types.ts";
import { expectDim, expectSameShape, lastDim, need } from "./check.ts";
import { applyChain, chainOf } from "./ew-chain.ts";
import { attrNum, defineOp, type ValueType } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// RMSNorm / LayerNorm, and their fused forms with the residual add before them, which return both the
// normalised value and the new residual stream (one kernel instead of two round trips of the hidden state).
//
// Attributes: eps (number); weight_offset (number, default 0): the norm multiplies by
// (weight + weight_offset), in fp32 — Gemma's RMSNorm stores w and scales by (1 + w); pre / post (optional,
// ew-chain.ts): chains of unary elementwise ops the norm-fusion pass folded in, pre applied to x as it is read
// (before the residual add of the add_ forms), post to the normalised output y.

function rmsRow(x: Float32Array, o: number, h: number, w: Float32Array, eps: number, out: Float32Array) {
  let ss = 0;
  for (let i = 0; i < h; i++) ss += x[o + i] * x[o + i];
  const inv = 1 / Math.sqrt(ss / h + eps);
  for (let i = 0; i < h; i++) out[o + i] = x[o + i] * inv * w[i];
}

/** The norm's effective weight: w + weight_offset (w itself when there is no offset). */
function normWeight(w: HostTensor, attrs: Attrs): Float32Array {
  const off = attrNum(attrs, "weight_offset", 0);
  return off === 0 ? w.f32 : w.f32.map((v) => v + off);
}

function lnRow(
  x: Float32Array,
  o: number,
  h: number,
  w: Float32Array,
  b: Float32Array | null,
  eps: number,
  out: Float32Array,
) {
  let mean = 0;
  for (let i = 0; i < h; i++) mean += x[o + i];
  mean /= h;
  let v = 0;
  for (let i = 0; i < h; i++) v += (x[o + i] - mean) ** 2;
  const inv = 1 / Math.sqrt(v / h + eps);
  for (let i = 0; i < h; i++) out[o + i] = (x[o + i] - mean) * inv * w[i] + (b ? b[i] : 0);
}

function normInfer(op: string, x: ValueType | null, w: ValueType | null, attrs: Attrs): ValueType {
  chainOf(attrs, "pre");
  chainOf(attrs, "post");
  const xi = need(op, x, "x");
  const wi = need(op, w, "weight");
  expectDim(op, lastDim(xi.shape), wi.shape[0], "normalised width");
  return xi;
}

// add_rms_norm / add_layer_norm: (norm(sum), sum), both of x's type; the residual has x's shape.
function addNormInfer(
  op: string,
  x: ValueType | null,
  r: ValueType | null,
  w: ValueType | null,
  attrs: Attrs,
): ValueType[] {
  const t = normInfer(op, x, w, attrs);
  expectSameShape(op, t.shape, need(op, r, "residual").shape);
  return [t, t];
}

function sum(a: HostTensor, b: HostTensor): HostTensor {
  const out = new Float32Array(a.f32.length);
  for (let i = 0; i < out.length; i++) out[i] = a.f32[i] + b.f32[i];
  return new HostTensor(a.shape, out);
}

function runNorm(
  x: HostTensor,
  attrs: Attrs,
  row: (x: Float32Array, o: number, h: number, out: Float32Array) => void,
) {
  const h = x.cols;
  const out = new Float32Array(x.f32.length);
  for (let r = 0; r < x.rows; r++) row(x.f32, r * h, h, out);
  applyChain(out, chainOf(attrs, "post"));
  return new HostTensor(x.shape, out);
}

/** x with the norm's pre chain applied (x itself when there is none). */
function pre(x: HostTensor, attrs: Attrs): HostTensor {
  const c = chainOf(attrs, "pre");
  if (!c.ops.length) return x;
  const v = Float32Array.from(x.f32);
  applyChain(v, c);
  return new HostTensor(x.shape, v);
}

defineOp({
  name: "rms_norm",
  inputs: ["x", "weight"],
  numOutputs: 1,
  doc: "RMSNorm",
  infer: ([x, w], attrs) => [normInfer("rms_norm", x, w, attrs)],
  ref([x, w], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    return [runNorm(pre(x!, attrs), attrs, (xv, o, h, out) => rmsRow(xv, o, h, wv, eps, out))];
  },
});

defineOp({
  name: "add_rms_norm",
  report: "fused",
  inputs: ["x", "residual", "weight"],
  numOutputs: 2,
  doc: "sum = x + residual; (RMSNorm(sum), sum)",
  infer: ([x, r, w], attrs) => addNormInfer("add_rms_norm", x, r, w, attrs),
  ref([x, r, w], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    const s = sum(pre(x!, attrs), r!);
    return [runNorm(s, attrs, (xv, o, h, out) => rmsRow(xv, o, h, wv, eps, out)), s];
  },
});

defineOp({
  name: "layer_norm",
  inputs: ["x", "weight", "bias?"],
  numOutputs: 1,
  doc: "LayerNorm",
  infer: ([x, w], attrs) => [normInfer("layer_norm", x, w, attrs)],
  ref([x, w, b], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    return [
      runNorm(pre(x!, attrs), attrs, (xv, o, h, out) => lnRow(xv, o, h, wv, b ? b.f32 : null, eps, out)),
    ];
  },
});

defineOp({
  name: "add_layer_norm",
  report: "fused",
  inputs: ["x", "residual", "weight", "bias?"],
  numOutputs: 2,
  doc: "sum = x + residual; (LayerNorm(sum), sum)",
  infer: ([x, r, w], attrs) => addNormInfer("add_layer_norm", x, r, w, attrs),
  ref([x, r, w, b], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    const s = sum(pre(x!, attrs), r!);
    return [runNorm(s, attrs, (xv, o, h, out) => lnRow(xv, o, h, wv, b ? b.f32 : null, eps, out)), s];
  },
});
