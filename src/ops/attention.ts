import type { Attrs } from "../ir/types.ts";
import { need } from "./check.ts";
import { attrNum, defineOp, type RefContext } from "./registry.ts";
import { applyRope, ropeAttrs } from "./rope.ts";
import { HostTensor } from "./tensor.ts";

// Causal self-attention over each sequence's cached past plus its new tokens. The op owns the KV
// cache: it writes the new k/v rows at their positions, then each token attends to positions 0..pos
// of its own sequence. Model files never see the cache.

function attnAttrs(attrs: Attrs) {
  const numHeads = attrNum(attrs, "num_heads");
  const numKv = attrNum(attrs, "num_kv_heads");
  if (numHeads % numKv) throw new Error(`attention: ${numHeads} heads not divisible by ${numKv} KV heads`);
  return {
    layer: attrNum(attrs, "layer"),
    numHeads,
    numKv,
    headDim: attrNum(attrs, "head_dim"),
    scale: attrNum(attrs, "scale"),
  };
}

/** q/k/v rows are read at (row*stride + offset); q is [T, nH*D] contiguous. */
function attend(
  q: Float32Array,
  k: Float32Array,
  kStride: number,
  kOff: number,
  v: Float32Array,
  vStride: number,
  vOff: number,
  attrs: Attrs,
  ctx: RefContext,
): Float32Array {
  const { layer, numHeads, numKv, headDim: D, scale } = attnAttrs(attrs);
  const T = ctx.step.positions.length;
  const out = new Float32Array(T * numHeads * D);
  const group = numHeads / numKv;
  const kvw = numKv * D;
  for (const s of ctx.step.seqs) {
    const cache = ctx.kv.get(s.seqId, layer);
    for (let t = s.start; t < s.start + s.count; t++) {
      const pos = ctx.step.positions[t];
      cache.k[pos] = k.slice(t * kStride + kOff, t * kStride + kOff + kvw);
      cache.v[pos] = v.slice(t * vStride + vOff, t * vStride + vOff + kvw);
      ctx.kvRound?.(cache.k[pos]);
      ctx.kvRound?.(cache.v[pos]);
    }
    for (let t = s.start; t < s.start + s.count; t++) {
      const pos = ctx.step.positions[t];
      const scores = new Float64Array(pos + 1);
      for (let h = 0; h < numHeads; h++) {
        const kh = Math.floor(h / group);
        const qo = t * numHeads * D + h * D;
        let max = -Infinity;
        for (let j = 0; j <= pos; j++) {
          const kr = cache.k[j];
          if (!kr)
            throw new Error(
              `attention: layer ${layer} sequence ${s.seqId} has no cached key at position ${j}`,
            );
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * kr[kh * D + d];
          scores[j] = dot * scale;
          if (scores[j] > max) max = scores[j];
        }
        let sum = 0;
        for (let j = 0; j <= pos; j++) {
          scores[j] = Math.exp(scores[j] - max);
          sum += scores[j];
        }
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let j = 0; j <= pos; j++) acc += scores[j] * cache.v[j][kh * D + d];
          out[qo + d] = acc / sum;
        }
      }
    }
  }
  return out;
}

defineOp({
  name: "attention",
  inputs: ["q", "k", "v"],
  numOutputs: 1,
  doc: "causal attention over the KV cache",
  sideEffects: true,
  infer([q, k, v], attrs) {
    const { numHeads, numKv, headDim } = attnAttrs(attrs);
    const qi = need("attention", q, "q");
    const ki = need("attention", k, "k");
    need("attention", v, "v");
    if (qi.shape[1] !== numHeads * headDim)
      throw new Error(`attention: q width ${String(qi.shape[1])} != ${numHeads}×${headDim}`);
    if (ki.shape[1] !== numKv * headDim)
      throw new Error(`attention: k width ${String(ki.shape[1])} != ${numKv}×${headDim}`);
    return [qi];
  },
  ref([q, k, v], attrs, ctx) {
    const kvw = k!.cols;
    return [new HostTensor(q!.shape, attend(q!.f32, k!.f32, kvw, 0, v!.f32, kvw, 0, attrs, ctx))];
  },
});

// RoPE + split + KV-cache write + attention, reading the packed output of the fused QKV GEMM.
defineOp({
  name: "fused_attention",
  report: "fused",
  inputs: ["qkv", "positions", "inv_freq?"],
  numOutputs: 1,
  doc: "rope + KV-cache write + causal attention on packed qkv",
  sideEffects: true,
  infer([qkv], attrs) {
    const { numHeads, numKv, headDim } = attnAttrs(attrs);
    const x = need("fused_attention", qkv, "qkv");
    const w = (numHeads + 2 * numKv) * headDim;
    if (x.shape[1] !== w) throw new Error(`fused_attention: qkv width ${String(x.shape[1])} != ${w}`);
    return [{ dtype: x.dtype, shape: [x.shape[0], numHeads * headDim] }];
  },
  ref([qkv, positions, invFreq], attrs, ctx) {
    const { numHeads, numKv, headDim: D } = attnAttrs(attrs);
    const rotaryDim = attrNum(attrs, "rotary_dim", 0);
    const w = qkv!.cols;
    const T = qkv!.rows;
    const x = qkv!.f32;
    const q = new Float32Array(T * numHeads * D);
    const k = new Float32Array(T * numKv * D);
    const pos = positions!.i32;
    if (rotaryDim > 0) {
      const style = ropeAttrs({ ...attrs, style: attrs.rope_style, num_heads: numHeads, head_dim: D }).style;
      applyRope(x, w, 0, T, numHeads, D, rotaryDim, style, pos, invFreq!.f32, q, numHeads * D);
      applyRope(x, w, numHeads * D, T, numKv, D, rotaryDim, style, pos, invFreq!.f32, k, numKv * D);
    } else {
      for (let t = 0; t < T; t++) {
        q.set(x.subarray(t * w, t * w + numHeads * D), t * numHeads * D);
        k.set(x.subarray(t * w + numHeads * D, t * w + (numHeads + numKv) * D), t * numKv * D);
      }
    }
    const out = attend(q, k, numKv * D, 0, x, w, (numHeads + numKv) * D, attrs, ctx);
    return [new HostTensor([T, numHeads * D], out)];
  },
});
