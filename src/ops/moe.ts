import type { Attrs, Dim } from "../ir/types.ts";
import { dequantize, type QuantSpec } from "../quant/weights.ts";
import { applyActivation } from "./activation-math.ts";
import { expectDim, lastDim, need } from "./check.ts";
import { attrNum, attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// A sparse mixture-of-experts MLP block (transformers' MixtralSparseMoeBlock after its router linear):
//   p = softmax(router_logits) in fp32 → the top_k experts (ties: lowest index first, as torch.topk)
//   → their weights renormalised to sum 1 when `normalize` (Mixtral; Qwen-MoE's norm_topk_prob=false
//   keeps the raw probabilities) → y = Σ_k p_k · w2_e(act(w1_e·x) ⊙ w3_e·x).
// Expert weights are stacked along axis 0, each expert keeping Hugging Face's [out, in] layout:
//   w1, w3: [E·I, H] (gate, up), w2: [E·H, I] (down). I is read from the shapes, so a tensor-parallel
//   rank holding I/tp columns of every expert runs the same op (its partial sums then all_reduce).
// The router is a plain `linear` before this op (replicated across ranks).
// With --quant int8-wo / int4-wo the three expert weights are stored quantised per output row (as
// quant_linear's weight-only schemes) with their scales as the optional inputs; the reference
// dequantises them to `compute_dtype` and runs the same math.

export interface Routing {
  /** [T, top_k] expert ids, best first. */
  experts: Int32Array;
  /** [T, top_k] their weights. */
  weights: Float32Array;
}

/** Softmax over each row of [T, E] logits, then top-k (lowest index first on ties), optionally renormalised. */
export function routeTopK(
  logits: Float32Array,
  numExperts: number,
  topK: number,
  normalize: boolean,
): Routing {
  const T = logits.length / numExperts;
  const experts = new Int32Array(T * topK);
  const weights = new Float32Array(T * topK);
  const p = new Float32Array(numExperts);
  for (let t = 0; t < T; t++) {
    const row = logits.subarray(t * numExperts, (t + 1) * numExperts);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (let e = 0; e < numExperts; e++) {
      p[e] = Math.exp(row[e] - max);
      sum += p[e];
    }
    for (let e = 0; e < numExperts; e++) p[e] = Math.fround(p[e] / sum);
    const taken = new Uint8Array(numExperts);
    let kept = 0;
    for (let k = 0; k < topK; k++) {
      let best = -1;
      // Strictly greater: among equal scores the lowest index wins, as torch.topk does.
      for (let e = 0; e < numExperts; e++) if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
      taken[best] = 1;
      experts[t * topK + k] = best;
      weights[t * topK + k] = p[best];
      kept += p[best];
    }
    if (normalize)
      for (let k = 0; k < topK; k++) weights[t * topK + k] = Math.fround(weights[t * topK + k] / kept);
  }
  return { experts, weights };
}

export function moeAttrs(attrs: Attrs): { E: number; K: number; normalize: boolean; activation: string } {
  const E = attrNum(attrs, "num_experts");
  const K = attrNum(attrs, "top_k");
  if (!(K >= 1 && K <= E)) throw new Error(`moe: top_k ${K} must be between 1 and num_experts ${E}`);
  return {
    E,
    K,
    normalize: attrNum(attrs, "normalize", 1) !== 0,
    activation: attrStr(attrs, "activation", "silu"),
  };
}

/** Weight-only quantisation of the experts, if any (attrs quant / group_size). */
function quantSpec(attrs: Attrs): QuantSpec | null {
  const q = attrStr(attrs, "quant", "none");
  if (q === "none") return null;
  if (q !== "int8-wo" && q !== "int4-wo") throw new Error(`moe: unsupported expert quant "${q}"`);
  return { scheme: q, groupSize: q === "int4-wo" ? attrNum(attrs, "group_size") : undefined };
}

/** In-features of a stored expert weight (int4 packs two values per stored element). */
function inFeatures(stored: Dim, q: QuantSpec | null): Dim {
  return q?.scheme === "int4-wo" && typeof stored === "number" ? stored * 2 : stored;
}

defineOp({
  name: "moe",
  inputs: ["x", "router_logits", "w1", "w3", "w2", "w1_scales?", "w3_scales?", "w2_scales?"],
  numOutputs: 1,
  doc: "mixture of experts: softmax → top-k routing → (renormalise) → Σ weight · SwiGLU expert",
  infer([x, router, w1, w3, w2, s1, s3, s2], attrs) {
    const { E } = moeAttrs(attrs);
    const q = quantSpec(attrs);
    if (q && !(s1 && s3 && s2))
      throw new Error(`moe: quant ${q.scheme} needs w1_scales, w3_scales and w2_scales`);
    const xi = need("moe", x, "x");
    const ri = need("moe", router, "router_logits");
    const g = need("moe", w1, "w1");
    const u = need("moe", w3, "w3");
    const d = need("moe", w2, "w2");
    expectDim("moe", lastDim(ri.shape), E, "router logits width");
    const H = lastDim(xi.shape);
    expectDim("moe", inFeatures(g.shape[1], q), H, "w1 input features");
    expectDim("moe", inFeatures(u.shape[1], q), H, "w3 input features");
    expectDim("moe", u.shape[0], g.shape[0], "w3 rows");
    const rows = g.shape[0];
    if (typeof rows !== "number" || rows % E)
      throw new Error(`moe: w1 rows ${String(rows)} are not num_experts ${E} × I`);
    expectDim("moe", inFeatures(d.shape[1], q), rows / E, "w2 input features (I)");
    expectDim("moe", d.shape[0], typeof H === "number" ? E * H : H, "w2 rows (E·H)");
    return [{ dtype: xi.dtype, shape: xi.shape }];
  },
  ref([x, router, w1, w3, w2, s1, s3, s2], attrs) {
    const { E, K, normalize, activation } = moeAttrs(attrs);
    const H = x!.cols;
    const T = x!.rows;
    const I = w1!.shape[0] / E;
    const { experts, weights } = routeTopK(router!.f32, E, K, normalize);
    const xv = x!.f32;
    const q = quantSpec(attrs);
    const cd = attrStr(attrs, "compute_dtype", "f32");
    const [g, u, d] = q
      ? [
          dequantize(w1!.f32, s1!.f32, E * I, H, q, cd),
          dequantize(w3!.f32, s3!.f32, E * I, H, q, cd),
          dequantize(w2!.f32, s2!.f32, E * H, I, q, cd),
        ]
      : [w1!.f32, w3!.f32, w2!.f32];
    const out = new Float32Array(T * H);
    const h = new Float32Array(I);
    for (let t = 0; t < T; t++) {
      const xo = t * H;
      for (let k = 0; k < K; k++) {
        const e = experts[t * K + k];
        const wgt = weights[t * K + k];
        const up = new Float32Array(I);
        for (let j = 0; j < I; j++) {
          const r = (e * I + j) * H;
          let a = 0;
          let b = 0;
          for (let i = 0; i < H; i++) {
            a += xv[xo + i] * g[r + i];
            b += xv[xo + i] * u[r + i];
          }
          h[j] = a;
          up[j] = b;
        }
        applyActivation(h, activation);
        for (let j = 0; j < I; j++) h[j] *= up[j];
        for (let n = 0; n < H; n++) {
          const r = (e * H + n) * I;
          let a = 0;
          for (let j = 0; j < I; j++) a += h[j] * d[r + j];
          out[xo + n] += wgt * a;
        }
      }
    }
    return [new HostTensor([...x!.shape], out)];
  },
});
