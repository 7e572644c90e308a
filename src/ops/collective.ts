import { need } from "./check.ts";
import { defineOp } from "./registry.ts";

// Sum over tensor-parallel ranks (NCCL all-reduce on the GPU; a real sum across the ranks that the
// reference executor runs in lock step).
defineOp({
  name: "all_reduce",
  inputs: ["x"],
  numOutputs: 1,
  doc: "sum over tensor-parallel ranks",
  sideEffects: true,
  infer: ([x]) => [need("all_reduce", x, "x")],
  ref: ([x], _attrs, ctx) => [ctx.allReduce(x!, ctx.nodeIndex)],
});
