import { activationFn } from "./activation-math.ts";
import { expectSameShape, lastDim, need, withLast } from "./check.ts";
import { attrStr, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

function binary(name: string, f: (a: number, b: number) => number) {
  defineOp({
    name,
    inputs: ["a", "b"],
    numOutputs: 1,
    doc: `elementwise ${name}`,
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

function unary(name: string, activation: (attrs: Record<string, unknown>) => string) {
  defineOp({
    name,
    inputs: ["x"],
    numOutputs: 1,
    doc: `elementwise ${name}`,
    infer: ([x]) => [need(name, x, "x")],
    ref([x], attrs) {
      const f = activationFn(activation(attrs));
      const out = Float32Array.from(x!.f32, f);
      return [new HostTensor(x!.shape, out)];
    },
  });
}

binary("add", (a, b) => a + b);
binary("mul", (a, b) => a * b);
unary("silu", () => "silu");
// approximate: "tanh" is gelu_new / gelu_pytorch_tanh, "none" the exact erf form.
unary("gelu", (attrs) => ((attrs.approximate ?? "tanh") === "tanh" ? "gelu_tanh" : "gelu"));

// act(x[:, :I]) * x[:, I:] — the second half of a fused gate/up GEMM output.
defineOp({
  name: "gated_act",
  inputs: ["x"],
  numOutputs: 1,
  doc: "act(gate) * up over the two halves of the last dim",
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
