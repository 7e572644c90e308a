import { type Attrs, type Dim, DTYPE_BYTES } from "../ir/types.ts";
import { quantizeRowsE4m3 } from "../quant/fp8.ts";
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
// Expert parallelism: a rank holding experts [expert_start, expert_start + local_experts) of the
// num_experts the router scores (attrs, defaults 0 and num_experts) routes every token exactly as the
// others and adds only its own experts' contributions; an all_reduce after the op sums the ranks.
// With --quant int8-wo / int4-wo the three expert weights are stored quantised per output row (as
// quant_linear's weight-only schemes) with their scales as the optional inputs; the reference
// dequantises them to `compute_dtype` and runs the same math. With --quant fp8 they are E4M3 with
// per-row scales and the activations entering each expert GEMM are quantised per token (W8A8, exactly
// quant_linear's fp8 numerics: x once per token for w1 / w3, each expert's SwiGLU output for w2).

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

export interface MoeAttrs {
  /** Experts the router scores. */
  E: number;
  K: number;
  normalize: boolean;
  activation: string;
  /** The experts this op holds weights for: [start, start + local). */
  start: number;
  local: number;
}

export function moeAttrs(attrs: Attrs): MoeAttrs {
  const E = attrNum(attrs, "num_experts");
  const K = attrNum(attrs, "top_k");
  if (!(K >= 1 && K <= E)) throw new Error(`moe: top_k ${K} must be between 1 and num_experts ${E}`);
  const start = attrNum(attrs, "expert_start", 0);
  const local = attrNum(attrs, "local_experts", E);
  if (!(Number.isInteger(start) && local >= 1 && start >= 0 && start + local <= E))
    throw new Error(`moe: experts [${start}, ${start + local}) are not within num_experts ${E}`);
  return {
    E,
    K,
    normalize: attrNum(attrs, "normalize", 1) !== 0,
    activation: attrStr(attrs, "activation", "silu"),
    start,
    local,
  };
}

/** Weight-only quantisation of the experts, if any (attrs quant / group_size). */
function quantSpec(attrs: Attrs): QuantSpec | null {
  const q = attrStr(attrs, "quant", "none");
  if (q === "none") return null;
  if (q !== "fp8" && q !== "int8-wo" && q !== "int4-wo")
    throw new Error(`moe: unsupported expert quant "${q}"`);
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
    const { E, local } = moeAttrs(attrs);
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
    if (typeof rows !== "number" || rows % local)
      throw new Error(`moe: w1 rows ${String(rows)} are not local_experts ${local} × I`);
    expectDim("moe", inFeatures(d.shape[1], q), rows / local, "w2 input features (I)");
    expectDim("moe", d.shape[0], typeof H === "number" ? local * H : H, "w2 rows (local experts · H)");
    return [{ dtype: xi.dtype, shape: xi.shape }];
  },
  // The CUDA runtime's kernels (native/kernels-notes.md "moe"), decode path: routing, gate/up, down, combine. Per
  // token they pass through memory top_k × (expert id and weight, h = act(gate) ⊙ up in the dtype, the fp32 down
  // row), each written once and read back once.
  kernels([x, , w1], attrs) {
    const { K, local } = moeAttrs(attrs);
    const H = x && typeof lastDim(x.shape) === "number" ? (lastDim(x.shape) as number) : 0;
    const I = w1 && typeof w1.shape[0] === "number" ? w1.shape[0] / local : 0;
    const es = x ? DTYPE_BYTES[x.dtype] : 0;
    return { launches: 4, scratchBytesPerToken: 2 * K * (8 + I * es + H * 4) };
  },
  ref([x, router, w1, w3, w2, s1, s3, s2], attrs) {
    const { E, K, normalize, activation, start, local } = moeAttrs(attrs);
    const H = x!.cols;
    const T = x!.rows;
    const I = w1!.shape[0] / local;
    const { experts, weights } = routeTopK(router!.f32, E, K, normalize);
    const q = quantSpec(attrs);
    const cd = attrStr(attrs, "compute_dtype", "f32");
    // y[rows j0.., n] = Σ_i a[i]·w[row, i] for weight rows [r0, r0 + n): fp32 (weights dequantised as the
    // weight-only kernels do), or fp8 W8A8 (a quantised per token, then the two scales).
    let gemv: (
      a: Float32Array,
      w: Float32Array,
      s: Float32Array | null,
      r0: number,
      n: number,
      out: Float32Array,
    ) => void;
    let ws: [Float32Array, Float32Array, Float32Array];
    if (q?.scheme === "fp8") {
      ws = [w1!.f32, w3!.f32, w2!.f32];
      gemv = (a, w, s, r0, n, out) => {
        const k = a.length;
        const { q: qa, scales: sa } = quantizeRowsE4m3(a, 1, k);
        for (let j = 0; j < n; j++) {
          const r = (r0 + j) * k;
          let acc = 0;
          for (let i = 0; i < k; i++) acc += qa[i] * w[r + i];
          out[j] = Math.fround(Math.fround(acc) * Math.fround(sa[0] * s![r0 + j]));
        }
      };
    } else {
      ws = q
        ? [
            dequantize(w1!.f32, s1!.f32, local * I, H, q, cd),
            dequantize(w3!.f32, s3!.f32, local * I, H, q, cd),
            dequantize(w2!.f32, s2!.f32, local * H, I, q, cd),
          ]
        : [w1!.f32, w3!.f32, w2!.f32];
      gemv = (a, w, _s, r0, n, out) => {
        const k = a.length;
        for (let j = 0; j < n; j++) {
          const r = (r0 + j) * k;
          let acc = 0;
          for (let i = 0; i < k; i++) acc += a[i] * w[r + i];
          out[j] = acc;
        }
      };
    }
    const [g, u, d] = ws;
    const [sg, su, sd] = q?.scheme === "fp8" ? [s1!.f32, s3!.f32, s2!.f32] : [null, null, null];
    const out = new Float32Array(T * H);
    const h = new Float32Array(I);
    const up = new Float32Array(I);
    const y = new Float32Array(H);
    for (let t = 0; t < T; t++) {
      const xt = x!.f32.subarray(t * H, (t + 1) * H);
      for (let k = 0; k < K; k++) {
        const e = experts[t * K + k] - start;
        if (e < 0 || e >= local) continue; // another rank's expert
        gemv(xt, g, sg, e * I, I, h);
        gemv(xt, u, su, e * I, I, up);
        applyActivation(h, activation);
        for (let j = 0; j < I; j++) h[j] *= up[j];
        gemv(h, d, sd, e * H, H, y);
        const wgt = weights[t * K + k];
        for (let n = 0; n < H; n++) out[t * H + n] += wgt * y[n];
      }
    }
    return [new HostTensor([...x!.shape], out)];
  },
});
