// Registry ops that a backend deliberately does not have, and why. test/op-tables.test.ts requires every op of
// src/ops/ to be in the CUDA runtime's ops.def and the ONNX lowerings, or to be listed here (and a listed op to
// be really absent, so the list cannot go stale).
export const WITHOUT: Readonly<Record<"native" | "onnx", Readonly<Record<string, string>>>> = {
  native: {},
  onnx: {
    quant_linear: "quantised builds are not exported to ONNX yet",
  },
};

/**
 * Node attributes the CUDA runtime does not read yet, as "op.attr" → why: an engine whose node sets one
 * will not run on the GPU (test/op-tables.test.ts checks that the runtime's sources really do not parse it).
 */
export const NATIVE_WITHOUT_ATTRS: Readonly<Record<string, string>> = {};
