// Every elementwise op's ONNX lowering (src/onnx/lower.ts) against its CPU reference semantics
// (src/ops/elementwise.ts), run in ONNX Runtime on random inputs: two implementations of one
// declaration that must agree.
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import type { Attrs, Node } from "../../src/ir/types.ts";
import { ELEM, OnnxBuilder, onnx, valueInfo } from "../../src/onnx/builder.ts";
import { LOWERINGS, type LowerCtx } from "../../src/onnx/lower.ts";
import { getOp, HostTensor } from "../../src/ops/index.ts";

const SHAPE = [3, 8];
const CASES: [string, Attrs][] = [
  ["add", {}],
  ["sub", {}],
  ["mul", {}],
  ["div", {}],
  ["silu", {}],
  ["gelu", { approximate: "tanh" }],
  ["gelu", { approximate: "none" }],
  ["tanh", {}],
  ["sigmoid", {}],
  ["exp", {}],
  ["scale", { factor: 0.125 }],
  ["softcap", { cap: 1.5 }],
];

let seed = 7;
const rand = () => {
  seed = (seed * 1103515245 + 12345) % 2 ** 31;
  return (seed / 2 ** 31 - 0.5) * 6;
};

async function runOnnx(op: string, attrs: Attrs, inputs: Float32Array[]): Promise<Float32Array> {
  const b = new OnnxBuilder();
  const names = inputs.map((_, i) => `in${i}`);
  let out = "";
  const c = {
    b,
    act: ELEM.f32,
    tp: 1,
    name: (id: number) => names[id],
    set: (_: number, n: string) => {
      out = n;
    },
    width: () => SHAPE[1],
  } as unknown as LowerCtx;
  const node: Node = { op, inputs: names.map((_, i) => i), outputs: [99], attrs };
  LOWERINGS[op](c, node);
  b.op("Identity", [out], {}, { names: ["out"] });
  const model = onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    graph: {
      name: op,
      node: b.nodes,
      initializer: b.initializers,
      input: names.map((n) => valueInfo(n, ELEM.f32, SHAPE)),
      output: [valueInfo("out", ELEM.f32, SHAPE)],
    },
  }).finish();
  const sess = await ort.InferenceSession.create(model);
  const feeds = Object.fromEntries(names.map((n, i) => [n, new ort.Tensor("float32", inputs[i], SHAPE)]));
  return (await sess.run(feeds)).out.data as Float32Array;
}

describe("elementwise ops: ONNX lowering = CPU reference", () => {
  for (const [op, attrs] of CASES)
    it(`${op} ${JSON.stringify(attrs)}`, async () => {
      const n = getOp(op).inputs.length;
      const inputs = Array.from({ length: n }, () =>
        Float32Array.from({ length: SHAPE[0] * SHAPE[1] }, rand),
      );
      if (op === "div") inputs[1] = inputs[1].map((v) => (Math.abs(v) < 0.5 ? 0.5 : v)); // away from 0
      const want = getOp(op).ref(
        inputs.map((x) => new HostTensor(SHAPE, x)),
        attrs,
        {} as never,
      )[0].f32;
      const got = await runOnnx(op, attrs, inputs);
      let worst = 0;
      want.forEach((v, i) => (worst = Math.max(worst, Math.abs(got[i] - v) / Math.max(1, Math.abs(v)))));
      // fp32 on both sides: measured worst 1.5e-7 (silu), relative to max(1, |y|).
      expect(worst).toBeLessThanOrEqual(1e-6);
    });
});
