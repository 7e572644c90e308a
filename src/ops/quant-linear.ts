import type { Attrs } from "../ir/types.ts";
import { quantizeRowsE4m3 } from "../quant/fp8.ts";
import { dequantize, type QuantScheme, type QuantSpec, valuesPerStoredColumn } from "../quant/weights.ts";
import { applyActivation } from "./activation-math.ts";
import { expectDim, lastDim, need, withLast } from "./check.ts";
import { applyChain, chainOf } from "./ew-chain.ts";
import { attrNum, attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// A quantised linear: y = post(act(x·wᵀ + bias)) + residual with w stored quantised (src/quant/weights.ts);
// post: the chain of unary elementwise ops epilogue-fusion gave the linear (ew-chain.ts).
//   quant "fp8":     x is quantised per token at run time (E4M3, s_x[t] = amax/448, RNE, saturating);
//                    acc = Σ q_x·q_w in fp32; y = fp32(acc · fp32(s_x[t] · s_w[n])), then the epilogue.
//   quant "int8-wo", "int4-wo": weight-only; w = fp32(q·s) rounded to `compute_dtype`, then as linear.
// A separate op from `linear` because the inputs (stored values + scales) and the kernels differ.

function spec(attrs: Attrs): QuantSpec {
  const scheme = attrStr(attrs, "quant") as QuantScheme;
  if (scheme !== "fp8" && scheme !== "int8-wo" && scheme !== "int4-wo")
    throw new Error(`quant_linear: unknown quant "${scheme}"`);
  return { scheme, groupSize: scheme === "int4-wo" ? attrNum(attrs, "group_size") : undefined };
}

defineOp({
  name: "quant_linear",
  inputs: ["x", "w", "scales", "bias?", "residual?"],
  numOutputs: 1,
  doc: "x·wᵀ with quantised w (fp8 weights+activations, int8/int4 weight-only) (+bias) (→act) (+residual)",
  infer([x, w, scales, bias, residual], attrs) {
    const s = spec(attrs);
    chainOf(attrs, "post");
    const xi = need("quant_linear", x, "x");
    const wi = need("quant_linear", w, "w");
    need("quant_linear", scales, "scales");
    const n = wi.shape[0];
    const kStored = wi.shape[1];
    if (typeof kStored !== "number") throw new Error("quant_linear: weight dims must be static");
    const k = kStored * valuesPerStoredColumn(s.scheme);
    expectDim("quant_linear", lastDim(xi.shape), k, "input features");
    if (bias) expectDim("quant_linear", bias.shape[0], n, "bias length");
    if (residual) expectDim("quant_linear", lastDim(residual.shape), n, "residual width");
    return [{ dtype: xi.dtype, shape: withLast(xi.shape, n) }];
  },
  ref([x, w, scales, bias, residual], attrs) {
    const s = spec(attrs);
    const n = w!.shape[0];
    const k = x!.cols;
    const rows = x!.rows;
    const out = new Float32Array(rows * n);
    if (s.scheme === "fp8") {
      const { q, scales: sx } = quantizeRowsE4m3(x!.f32, rows, k);
      const wq = w!.f32;
      const sw = scales!.f32;
      for (let r = 0; r < rows; r++)
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let i = 0; i < k; i++) acc += q[r * k + i] * wq[j * k + i];
          out[r * n + j] = Math.fround(Math.fround(acc) * Math.fround(sx[r] * sw[j]));
        }
    } else {
      const wd = dequantize(w!.f32, scales!.f32, n, k, s, attrStr(attrs, "compute_dtype", "f32"));
      const xv = x!.f32;
      for (let r = 0; r < rows; r++)
        for (let j = 0; j < n; j++) {
          let acc = 0;
          for (let i = 0; i < k; i++) acc += xv[r * k + i] * wd[j * k + i];
          out[r * n + j] = acc;
        }
    }
    if (bias) for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) out[r * n + j] += bias.f32[j];
    applyActivation(out, attrStr(attrs, "activation", "none"));
    applyChain(out, chainOf(attrs, "post"));
    if (residual) for (let i = 0; i < out.length; i++) out[i] += residual.f32[i];
    return [new HostTensor([...x!.shape.slice(0, -1), n], out)];
  },
});
