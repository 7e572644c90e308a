// Registry ops that a backend deliberately does not have, and why. test/op-tables.test.ts requires every op of
// src/ops/ to be in the CUDA runtime's ops.def and the ONNX lowerings, or to be listed here (and a listed op to
// be really absent, so the list cannot go stale).
export const WITHOUT: Readonly<Record<"native" | "onnx", Readonly<Record<string, string>>>> = {
  native: {
    moe: "no mixture-of-experts kernel in the CUDA runtime yet (the CPU reference executor runs it)",
  },
  onnx: {
    quant_linear: "quantised builds are not exported to ONNX yet",
  },
};
