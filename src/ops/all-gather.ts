import { lastDim, need, withLast } from "./check.ts";
import { attrNum, defineOp } from "./registry.ts";

// Concatenation over tensor-parallel ranks along the last dim, in rank order (NCCL all-gather on the
// GPU, then a transpose of the rank-major result into [rows, tp·cols]; the reference executor runs
// the ranks in lock step and concatenates their inputs). Used after the vocab-parallel lm_head, whose
// rank r holds logits columns [r·V/tp, (r+1)·V/tp).
defineOp({
  name: "all_gather",
  inputs: ["x"],
  numOutputs: 1,
  doc: "concatenate over tensor-parallel ranks (last dim)",
  sideEffects: true,
  infer([x], attrs) {
    const xi = need("all_gather", x, "x");
    const tp = attrNum(attrs, "tp");
    const d = lastDim(xi.shape);
    if (typeof d !== "number") throw new Error("all_gather: last dim must be static");
    return [{ dtype: xi.dtype, shape: withLast(xi.shape, d * tp) }];
  },
  ref: ([x], _attrs, ctx) => [ctx.allGather(x!, ctx.nodeIndex)],
});
