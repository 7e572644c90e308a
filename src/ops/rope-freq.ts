// Inverse RoPE frequencies, computed once at build time and stored in the engine as a small fp32
// constant, so the scaling variants (linear, llama3, YaRN, dynamic NTK) live here and nowhere else —
// kernels only compute angle = position · inv_freq[i]. Each follows transformers'
// modeling_rope_utils (_compute_*_parameters), checked against its own output in
// test/rope-scaling.test.ts.
import type { RopeScaling } from "../checkpoint/hf-config.ts";

export type { RopeScaling };

/** As transformers: base ** (arange(0, dim, 2) / dim) in fp32. */
function ropeBase(rotaryDim: number, theta: number): Float32Array {
  const half = rotaryDim / 2;
  const pos = new Float32Array(half);
  const t = Math.fround(theta);
  for (let i = 0; i < half; i++) pos[i] = t ** Math.fround((2 * i) / rotaryDim);
  return pos;
}

/**
 * inv_freq for `rotaryDim` rotated dims. `seqLen` is the longest sequence the engine serves: dynamic
 * NTK scaling stretches theta for it (transformers recomputes it per call; one table per engine is
 * exact for sequences up to max_position_embeddings and for those of length seqLen).
 */
export function ropeInvFreq(
  rotaryDim: number,
  theta: number,
  scaling: RopeScaling,
  o: { seqLen?: number } = {},
): Float32Array {
  if (scaling?.type === "dynamic") {
    const maxPos = scaling.originalMaxPositionEmbeddings;
    const seqLen = Math.max(o.seqLen ?? maxPos, maxPos);
    const f = scaling.factor;
    theta *= ((f * seqLen) / maxPos - (f - 1)) ** (rotaryDim / (rotaryDim - 2));
  }
  const pos = ropeBase(rotaryDim, theta);
  const inv = pos.map((p) => 1 / p);
  if (!scaling || scaling.type === "dynamic") return inv;
  if (scaling.type === "linear") return inv.map((f) => f / scaling.factor);
  if (scaling.type === "yarn") return yarnInvFreq(pos, rotaryDim, theta, scaling);
  return llama3InvFreq(inv, scaling);
}

/** What YaRN multiplies cos and sin by (1 for every other scaling). */
export function ropeAttentionFactor(scaling: RopeScaling): number {
  if (scaling?.type !== "yarn") return 1;
  if (scaling.attentionFactor !== null) return scaling.attentionFactor;
  const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
  const { factor, mscale: m, mscaleAllDim: all } = scaling;
  return m && all ? mscale(factor, m) / mscale(factor, all) : mscale(factor);
}

function llama3InvFreq(inv: Float32Array, scaling: Extract<RopeScaling, { type: "llama3" }>): Float32Array {
  const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: old } = scaling;
  const lowWavelen = old / lowFreqFactor;
  const highWavelen = old / highFreqFactor;
  return inv.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    if (wavelen < highWavelen) return f;
    if (wavelen > lowWavelen) return f / factor;
    const smooth = (old / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    return (1 - smooth) * (f / factor) + smooth * f;
  });
}

/** Dims below `low` keep their frequency (extrapolate), above `high` are divided by factor. */
function yarnInvFreq(
  pos: Float32Array,
  dim: number,
  theta: number,
  s: Extract<RopeScaling, { type: "yarn" }>,
): Float32Array {
  const correctionDim = (rotations: number) =>
    (dim * Math.log(s.originalMaxPositionEmbeddings / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = correctionDim(s.betaFast);
  let high = correctionDim(s.betaSlow);
  if (s.truncate) {
    low = Math.floor(low);
    high = Math.ceil(high);
  }
  low = Math.max(low, 0);
  high = Math.min(high, dim - 1);
  if (low === high) high += 0.001; // as transformers: no division by zero
  return pos.map((p, i) => {
    const ramp = Math.min(1, Math.max(0, Math.fround((i - low) / (high - low))));
    const extrapolation = 1 - ramp;
    return (
      Math.fround(1 / Math.fround(s.factor * p)) * (1 - extrapolation) + Math.fround(1 / p) * extrapolation
    );
  });
}
