// Inverse RoPE frequencies, computed once at build time and stored in the engine as a small fp32
// constant, so the scaling variants (llama3, linear) live here and nowhere else — kernels only
// compute angle = position · inv_freq[i].
import type { RopeScaling } from "../checkpoint/hf-config.ts";

export type { RopeScaling };

export function ropeInvFreq(rotaryDim: number, theta: number, scaling: RopeScaling): Float32Array {
  const half = rotaryDim / 2;
  const inv = new Float32Array(half);
  // As transformers: base ** (arange(0, dim, 2) / dim) in fp32.
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.fround(theta ** Math.fround((2 * i) / rotaryDim));
  if (process.env.TSLLM_DBG_BF16)
    for (let i = 0; i < half; i++) {
      const b = new Float32Array([inv[i]]);
      const u = new Uint32Array(b.buffer);
      u[0] = ((u[0] + 0x7fff + ((u[0] >> 16) & 1)) >>> 16) << 16;
      inv[i] = b[0];
    }
  return scaling ? scaleInvFreq(inv, scaling) : inv;
}

function scaleInvFreq(inv: Float32Array, scaling: NonNullable<RopeScaling>): Float32Array {
  if (scaling.type === "linear") return inv.map((f) => f / scaling.factor);
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
