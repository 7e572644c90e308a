import type { Attrs } from "../ir/types.ts";
import { need } from "./check.ts";
import { attrNum, attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// Rotary position embedding over the heads of x [T, heads*head_dim].
// style "neox": pairs (i, i + R/2) (Llama, GPT-NeoX); "gptj": pairs (2i, 2i+1) (GPT-J interleaved).
// Dims at and beyond rotary_dim R pass through (partial rotary).
export function applyRope(
  x: Float32Array,
  rowStride: number,
  colOffset: number,
  rows: number,
  heads: number,
  headDim: number,
  rotaryDim: number,
  style: string,
  positions: Int32Array,
  invFreq: Float32Array,
  out: Float32Array,
  outStride: number,
): void {
  const half = rotaryDim / 2;
  for (let t = 0; t < rows; t++) {
    const pos = positions[t];
    for (let h = 0; h < heads; h++) {
      const src = t * rowStride + colOffset + h * headDim;
      const dst = t * outStride + h * headDim;
      for (let d = rotaryDim; d < headDim; d++) out[dst + d] = x[src + d];
      for (let i = 0; i < half; i++) {
        const ang = Math.fround(pos * invFreq[i]);
        const c = Math.fround(Math.cos(ang));
        const s = Math.fround(Math.sin(ang));
        const [a, b] = style === "neox" ? [i, i + half] : [2 * i, 2 * i + 1];
        const xa = x[src + a];
        const xb = x[src + b];
        out[dst + a] = xa * c - xb * s;
        out[dst + b] = xb * c + xa * s;
      }
    }
  }
}

export function ropeAttrs(attrs: Attrs) {
  const style = attrStr(attrs, "style");
  if (style !== "neox" && style !== "gptj") throw new Error(`rope: style must be neox or gptj, got ${style}`);
  return {
    numHeads: attrNum(attrs, "num_heads"),
    headDim: attrNum(attrs, "head_dim"),
    rotaryDim: attrNum(attrs, "rotary_dim"),
    style,
  };
}

defineOp({
  name: "rope",
  inputs: ["x", "positions", "inv_freq"],
  numOutputs: 1,
  doc: "rotary position embedding",
  infer([x, p, f], attrs) {
    const { numHeads, headDim, rotaryDim } = ropeAttrs(attrs);
    const xi = need("rope", x, "x");
    need("rope", p, "positions");
    need("rope", f, "inv_freq");
    if (xi.shape[1] !== numHeads * headDim)
      throw new Error(`rope: width ${String(xi.shape[1])} != ${numHeads}×${headDim}`);
    if (rotaryDim % 2 || rotaryDim > headDim)
      throw new Error(`rope: rotary_dim ${rotaryDim} must be even and ≤ head_dim`);
    return [xi];
  },
  ref([x, p, f], attrs) {
    const a = ropeAttrs(attrs);
    const out = new Float32Array(x!.f32.length);
    const w = x!.cols;
    applyRope(x!.f32, w, 0, x!.rows, a.numHeads, a.headDim, a.rotaryDim, a.style, p!.i32, f!.f32, out, w);
    return [new HostTensor(x!.shape, out)];
  },
});
