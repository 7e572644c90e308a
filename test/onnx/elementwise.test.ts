// Every elementwise op's ONNX lowering (src/onnx/lower.ts) against its CPU reference semantics
// (src/ops/elementwise.ts), run in ONNX Runtime on random inputs: two implementations of one
// declaration that must agree.
import { describe, expect, it } from "vitest";
import type { Attrs } from "../../src/ir/types.ts";
import { getOp, HostTensor } from "../../src/ops/index.ts";
import { lowerRun } from "./lower-run.ts";

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

describe("elementwise ops: ONNX lowering = CPU reference", () => {
  for (const [op, attrs] of CASES)
    it(`${op} ${JSON.stringify(attrs)}`, async () => {
      const n = getOp(op).inputs.length;
      const data = Array.from({ length: n }, () => Float32Array.from({ length: SHAPE[0] * SHAPE[1] }, rand));
      if (op === "div") data[1] = data[1].map((v) => (Math.abs(v) < 0.5 ? 0.5 : v)); // away from 0
      const inputs = data.map((x) => new HostTensor(SHAPE, x));
      const want = getOp(op).ref(inputs, attrs, {} as never)[0].f32;
      const [got] = (await lowerRun(op, attrs, inputs)).outs;
      let worst = 0;
      want.forEach((v, i) => (worst = Math.max(worst, Math.abs(got[i] - v) / Math.max(1, Math.abs(v)))));
      // fp32 on both sides: measured worst 1.5e-7 (silu), relative to max(1, |y|).
      expect(worst).toBeLessThanOrEqual(1e-6);
    });
});
