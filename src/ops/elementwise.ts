// Elementwise ops. Conventions (for every backend: reference, ONNX, CUDA):
//   - binary ops take two inputs of the same shape (no broadcasting) and return that shape;
//   - unary ops return x's shape and dtype;
//   - math runs in fp32 and the result is stored in the activation dtype;
//   - attributes are plain numbers or strings, named below, with no hidden defaults except where said.
import type { Attrs } from "../ir/types.ts";
import { activationFn, geluErf, geluTanh, silu } from "./activation-math.ts";
import { expectSameShape, lastDim, need, withLast } from "./check.ts";
import { UNARY } from "./ew-chain.ts";
import { attrNum, attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

function binary(name: string, doc: string, f: (a: number, b: number) => number) {
  defineOp({
    name,
    inputs: ["a", "b"],
    numOutputs: 1,
    doc,
    infer([a, b]) {
      const ai = need(name, a, "a");
      expectSameShape(name, ai.shape, need(name, b, "b").shape);
      return [ai];
    },
    ref([a, b]) {
      const out = new Float32Array(a!.f32.length);
      const av = a!.f32;
      const bv = b!.f32;
      for (let i = 0; i < out.length; i++) out[i] = f(av[i], bv[i]);
      return [new HostTensor(a!.shape, out)];
    },
  });
}

/** `fn(attrs)` returns the scalar function; it reads (and so checks) the op's attributes. */
function unary(name: string, doc: string, fn: (attrs: Attrs) => (x: number) => number) {
  defineOp({
    name,
    inputs: ["x"],
    numOutputs: 1,
    doc,
    infer: ([x], attrs) => {
      fn(attrs);
      return [need(name, x, "x")];
    },
    ref([x], attrs) {
      return [new HostTensor(x!.shape, Float32Array.from(x!.f32, fn(attrs)))];
    },
  });
}

binary("add", "a + b", (a, b) => a + b);
binary("sub", "a − b", (a, b) => a - b);
binary("mul", "a · b", (a, b) => a * b);
binary("div", "a / b", (a, b) => a / b);

unary("silu", "x · sigmoid(x)", () => silu);
unary(
  "gelu",
  'GELU; approximate: "tanh" (gelu_new / gelu_pytorch_tanh; the default) or "none" (exact erf)',
  (a) => ((a.approximate ?? "tanh") === "tanh" ? geluTanh : geluErf),
);
// The math of these five is ew-chain.ts's UNARY (shared with the chains fusion folds into linears and norms).
const chainable = (name: string) => (a: Attrs) => {
  const d = UNARY[name];
  return d.fn(d.attr ? attrNum(a, d.attr) : 0);
};
unary("tanh", "tanh(x)", chainable("tanh"));
unary("sigmoid", "1 / (1 + e^−x)", chainable("sigmoid"));
unary("exp", "e^x", chainable("exp"));
unary("scale", "x · factor (factor: number), e.g. Gemma's embeddings · √hidden", chainable("scale"));
unary(
  "softcap",
  "cap · tanh(x / cap) (cap: number > 0), Gemma 2's attention / logit soft-capping",
  chainable("softcap"),
);

// act(x[:, :I]) * x[:, I:] — the second half of a fused gate/up GEMM output.
defineOp({
  name: "gated_act",
  inputs: ["x"],
  numOutputs: 1,
  doc: "act(gate) * up over the two halves of the last dim",
  report: "fused",
  infer([x], attrs) {
    const xi = need("gated_act", x, "x");
    const d = lastDim(xi.shape);
    if (typeof d !== "number" || d % 2) throw new Error("gated_act: last dim must be an even number");
    attrStr(attrs, "activation");
    return [{ dtype: xi.dtype, shape: withLast(xi.shape, d / 2) }];
  },
  ref([x], attrs) {
    const f = activationFn(attrStr(attrs, "activation"));
    const w = x!.cols;
    const half = w / 2;
    const rows = x!.rows;
    const xv = x!.f32;
    const out = new Float32Array(rows * half);
    for (let r = 0; r < rows; r++)
      for (let i = 0; i < half; i++) out[r * half + i] = f(xv[r * w + i]) * xv[r * w + half + i];
    return [new HostTensor([...x!.shape.slice(0, -1), half], out)];
  },
});
