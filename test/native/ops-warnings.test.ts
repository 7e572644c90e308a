// src/native/ops.ts with its inputs replaced: an ops.def line it cannot parse, ops and attributes listed as absent
// from the CUDA runtime (both lists are empty today, so test/op-tables.test.ts cannot reach those warnings), the
// moe quantisation and KV-cache dtype rules, and opsMissingOnGpu's order. The module is imported afresh per test:
// nativeOps() reads ops.def once per module.
import * as realFs from "node:fs";
import { beforeEach, describe, expect, it, vi } from "vitest";

const h = vi.hoisted(() => ({ def: null as string | null }));
vi.mock("node:fs", async (importOriginal) => {
  const fs = await importOriginal<typeof import("node:fs")>();
  const readFileSync = ((file: never, ...rest: never[]) =>
    h.def !== null && String(file).endsWith("ops.def")
      ? h.def
      : fs.readFileSync(file, ...rest)) as typeof fs.readFileSync;
  return { ...fs, default: { ...fs, readFileSync }, readFileSync };
});
vi.mock("../../src/ops/without.ts", () => ({
  WITHOUT: { native: { fancy_op: "no kernel for it yet" }, onnx: {} },
  NATIVE_WITHOUT_ATTRS: { "attention.window": "no windowed attention kernel" },
}));

const load = async () => {
  vi.resetModules();
  return import("../../src/native/ops.ts");
};
const FP16 = { dtype: "fp16", kv_cache_dtype: "fp16" };

describe("src/native/ops.ts", () => {
  beforeEach(() => {
    h.def = null;
  });

  it("reads ops.def once; a TSLLM_OP line it cannot parse is named in the error", async () => {
    const ops = await load();
    const real = realFs.readFileSync(ops.OPS_DEF, "utf8");
    expect(ops.nativeOps().get("linear")).toMatchObject({ cname: "Linear" });
    h.def = 'TSLLM_OP(Other, "other", 1, 1, 1)\n'; // read again: the cached table stays
    expect(ops.nativeOps().has("other")).toBe(false);
    expect(ops.nativeOps().has("linear")).toBe(true);
    h.def = `${real}\n  TSLLM_OP(Bad, "bad", x, 1, 1)  \n`;
    const fresh = await load();
    expect(() => fresh.nativeOps()).toThrow(`${fresh.OPS_DEF}: cannot parse "TSLLM_OP(Bad, "bad", x, 1, 1)"`);
    // An indented entry counts (it was skipped: the op looked absent from the runtime); a commented one does not.
    h.def = '  TSLLM_OP(Add, "add", 2, 2, 1)\n// TSLLM_OP(Not, "not", 1, 1, 1)\n';
    const one = await load();
    expect([...one.nativeOps()]).toEqual([["add", { cname: "Add", minInputs: 2, maxInputs: 2, outputs: 1 }]]);
    // Spaces anywhere between the fields or none, several digits, a negative count; nothing may follow the ")".
    h.def = 'TSLLM_OP(Wide,"wide",10,12,-1)\nTSLLM_OP( Spaced , "spaced" , 1 , 2 , 13 )  \n';
    const two = await load();
    expect([...two.nativeOps()]).toEqual([
      ["wide", { cname: "Wide", minInputs: 10, maxInputs: 12, outputs: -1 }],
      ["spaced", { cname: "Spaced", minInputs: 1, maxInputs: 2, outputs: 13 }],
    ]);
    h.def = 'TSLLM_OP(A, "a", 1, 1, 1) junk\n';
    const three = await load();
    expect(() => three.nativeOps()).toThrow(`cannot parse "TSLLM_OP(A, "a", 1, 1, 1) junk"`);
    h.def = 'TSLLM_OP(B, "b", 1, 1, 1)x\n';
    const four = await load();
    expect(() => four.nativeOps()).toThrow(`cannot parse "TSLLM_OP(B, "b", 1, 1, 1)x"`);
  });

  it("opsMissingOnGpu: each missing op once, sorted", async () => {
    const { opsMissingOnGpu } = await load();
    const g = { nodes: ["zeta", "linear", "alpha", "zeta", "alpha"].map((op) => ({ op, attrs: {} })) };
    expect(opsMissingOnGpu(g as never)).toEqual(["alpha", "zeta"]);
  });

  it("an op listed as absent says why; an attribute listed as unread warns only where a node of that op sets it", async () => {
    const { gpuWarnings } = await load();
    const node = (op: string, attrs: Record<string, unknown> = {}) => ({ op, attrs });
    expect(gpuWarnings({ nodes: [node("fancy_op"), node("odd_op")] } as never, FP16)).toEqual([
      "op fancy_op is not in the CUDA runtime (no kernel for it yet)",
      "op odd_op is not in the CUDA runtime",
    ]);
    const attention = node("attention", { window: 4096 });
    expect(gpuWarnings({ nodes: [node("linear"), attention] } as never, FP16)).toEqual([
      "op attention with attribute window is not run by the CUDA runtime (no windowed attention kernel)",
    ]);
    for (const nodes of [
      [node("attention", { scale: 1 })],
      [node("linear", { window: 4 })],
      [{ op: "attention" }], // no attrs at all
    ])
      expect(gpuWarnings({ nodes } as never, FP16)).toEqual([]);
  });

  it("moe with quantised experts warns; none, or no quant attribute, does not", async () => {
    const { gpuWarnings } = await load();
    const moe = (attrs: Record<string, unknown>) => ({
      nodes: [
        { op: "linear", attrs: {} },
        { op: "moe", attrs },
      ],
    });
    expect(gpuWarnings(moe({ quant: "int4-wo" }) as never, FP16)).toEqual([
      "op moe with int4-wo experts: the CUDA runtime's moe kernels take fp16 / bf16 experts only",
    ]);
    expect(gpuWarnings(moe({ quant: "none" }) as never, FP16)).toEqual([]);
    expect(gpuWarnings(moe({}) as never, FP16)).toEqual([]);
  });

  it("dtypes: fp16 and bf16 run; the KV cache in the activation dtype or fp8", async () => {
    const { gpuWarnings } = await load();
    const w = (dtype: string, kv_cache_dtype: string) =>
      gpuWarnings({ nodes: [] } as never, { dtype, kv_cache_dtype });
    expect(w("bf16", "bf16")).toEqual([]);
    expect(w("bf16", "fp8")).toEqual([]);
    expect(w("fp16", "fp8")).toEqual([]);
    expect(w("fp16", "bf16")).toEqual([
      "kv-cache-dtype bf16: the CUDA runtime's KV cache holds the activation dtype or fp8",
    ]);
    expect(w("fp32", "fp8")).toEqual(["dtype fp32: the CUDA runtime runs fp16 and bf16 engines"]);
  });
});
