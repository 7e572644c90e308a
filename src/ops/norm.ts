import type { Attrs } from "../ir/types.ts";
import { expectDim, expectSameShape, lastDim, need } from "./check.ts";
import { attrNum, defineOp, type ValueType } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// RMSNorm / LayerNorm, and their fused forms with the residual add before them, which return both the
// normalised value and the new residual stream (one kernel instead of two round trips of the hidden state).
//
// Attributes: eps (number); weight_offset (number, default 0): the norm multiplies by
// (weight + weight_offset), in fp32 — Gemma's RMSNorm stores w and scales by (1 + w).

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

function normInfer(op: string, x: ValueType | null, w: ValueType | null): ValueType {
  const xi = need(op, x, "x");
  const wi = need(op, w, "weight");
  expectDim(op, lastDim(xi.shape), wi.shape[0], "normalised width");
  return xi;
}

function sum(a: HostTensor, b: HostTensor): HostTensor {
  const out = new Float32Array(a.f32.length);
  for (let i = 0; i < out.length; i++) out[i] = a.f32[i] + b.f32[i];
  return new HostTensor(a.shape, out);
}

function runNorm(x: HostTensor, row: (x: Float32Array, o: number, h: number, out: Float32Array) => void) {
  const h = x.cols;
  const out = new Float32Array(x.f32.length);
  for (let r = 0; r < x.rows; r++) row(x.f32, r * h, h, out);
  return new HostTensor(x.shape, out);
}

defineOp({
  name: "rms_norm",
  inputs: ["x", "weight"],
  numOutputs: 1,
  doc: "RMSNorm",
  infer: ([x, w]) => [normInfer("rms_norm", x, w)],
  ref([x, w], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    return [runNorm(x!, (xv, o, h, out) => rmsRow(xv, o, h, wv, eps, out))];
  },
});

defineOp({
  name: "add_rms_norm",
  report: "fused",
  inputs: ["x", "residual", "weight"],
  numOutputs: 2,
  doc: "sum = x + residual; (RMSNorm(sum), sum)",
  infer([x, r, w]) {
    const t = normInfer("add_rms_norm", x, w);
    expectSameShape("add_rms_norm", t.shape, need("add_rms_norm", r, "residual").shape);
    return [t, t];
  },
  ref([x, r, w], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    const s = sum(x!, r!);
    return [runNorm(s, (xv, o, h, out) => rmsRow(xv, o, h, wv, eps, out)), s];
  },
});

defineOp({
  name: "layer_norm",
  inputs: ["x", "weight", "bias?"],
  numOutputs: 1,
  doc: "LayerNorm",
  infer: ([x, w]) => [normInfer("layer_norm", x, w)],
  ref([x, w, b], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    return [runNorm(x!, (xv, o, h, out) => lnRow(xv, o, h, wv, b ? b.f32 : null, eps, out))];
  },
});

defineOp({
  name: "add_layer_norm",
  report: "fused",
  inputs: ["x", "residual", "weight", "bias?"],
  numOutputs: 2,
  doc: "sum = x + residual; (LayerNorm(sum), sum)",
  infer([x, r, w]) {
    const t = normInfer("add_layer_norm", x, w);
    expectSameShape("add_layer_norm", t.shape, need("add_layer_norm", r, "residual").shape);
    return [t, t];
  },
  ref([x, r, w, b], attrs) {
    const eps = attrNum(attrs, "eps");
    const wv = normWeight(w!, attrs);
    const s = sum(x!, r!);
    return [runNorm(s, (xv, o, h, out) => lnRow(xv, o, h, wv, b ? b.f32 : null, eps, out)), s];
  },
});
