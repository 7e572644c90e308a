import type { Attrs } from "../ir/types.ts";
import { applyActivation } from "./activation-math.ts";
import { expectDim, lastDim, need, withLast } from "./check.ts";
import { applyChain, chainOf } from "./ew-chain.ts";
import { attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// y = post(act(x · wᵀ + bias)) + residual. The weight keeps Hugging Face's [out, in] layout; the optional
// bias, activation, post chain (ew-chain.ts: unary elementwise ops such as a logit softcap) and residual
// are GEMM epilogues that the epilogue-fusion pass folds in.
defineOp({
  name: "linear",
  inputs: ["x", "w", "bias?", "residual?"],
  numOutputs: 1,
  doc: "x·wᵀ (+bias) (→act) (→post chain) (+residual)",
  infer([x, w, bias, residual], attrs) {
    chainOf(attrs, "post");
    const xi = need("linear", x, "x");
    const wi = need("linear", w, "w");
    expectDim("linear", lastDim(xi.shape), wi.shape[1], "input features");
    if (bias) expectDim("linear", bias.shape[0], wi.shape[0], "bias length");
    const shape = withLast(xi.shape, wi.shape[0]);
    if (residual) expectDim("linear", lastDim(residual.shape), wi.shape[0], "residual width");
    return [{ dtype: xi.dtype, shape }];
  },
  ref([x, w, bias, residual], attrs: Attrs) {
    const [n, k] = w!.shape;
    const rows = x!.rows;
    const xv = x!.f32;
    const wv = w!.f32;
    const out = new Float32Array(rows * n);
    for (let r = 0; r < rows; r++) {
      const xo = r * k;
      for (let j = 0; j < n; j++) {
        const wo = j * k;
        let acc = 0;
        for (let i = 0; i < k; i++) acc += xv[xo + i] * wv[wo + i];
        out[r * n + j] = acc;
      }
    }
    if (bias) {
      const b = bias.f32;
      for (let r = 0; r < rows; r++) for (let j = 0; j < n; j++) out[r * n + j] += b[j];
    }
    applyActivation(out, attrStr(attrs, "activation", "none"));
    applyChain(out, chainOf(attrs, "post"));
    if (residual) {
      const rv = residual.f32;
      for (let i = 0; i < out.length; i++) out[i] += rv[i];
    }
    return [new HostTensor(withLastNum(x!.shape, n), out)];
  },
});

function withLastNum(s: number[], d: number): number[] {
  return [...s.slice(0, -1), d];
}
