import type { Attrs } from "../ir/types.ts";
import { lastDim, need, withLast } from "./check.ts";
import { defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

function sizesOf(attrs: Attrs): number[] {
  const s = attrs.sizes;
  if (!Array.isArray(s) || s.some((v) => typeof v !== "number"))
    throw new Error("split: attribute sizes must be numbers");
  return s as number[];
}

// Split along the last dim (used after QKV fusion when a model's attention is not fused further).
defineOp({
  name: "split",
  inputs: ["x"],
  numOutputs: (attrs) => sizesOf(attrs).length,
  doc: "split along the last dim",
  infer([x], attrs) {
    const xi = need("split", x, "x");
    const sizes = sizesOf(attrs);
    const total = sizes.reduce((a, b) => a + b, 0);
    if (lastDim(xi.shape) !== total)
      throw new Error(`split: sizes sum to ${total}, last dim is ${String(lastDim(xi.shape))}`);
    return sizes.map((s) => ({ dtype: xi.dtype, shape: withLast(xi.shape, s) }));
  },
  ref([x], attrs) {
    const sizes = sizesOf(attrs);
    const w = x!.cols;
    const rows = x!.rows;
    let off = 0;
    return sizes.map((s) => {
      const out = new Float32Array(rows * s);
      for (let r = 0; r < rows; r++) out.set(x!.f32.subarray(r * w + off, r * w + off + s), r * s);
      off += s;
      return new HostTensor([...x!.shape.slice(0, -1), s], out);
    });
  },
});

// Picks the rows that need logits (last token of each sequence, or all for golden checks),
// like Hugging Face's logits_to_keep — lm_head then runs on those rows only.
defineOp({
  name: "gather_rows",
  inputs: ["x", "indices"],
  numOutputs: 1,
  doc: "rows of x at indices",
  infer([x, idx]) {
    const xi = need("gather_rows", x, "x");
    const ii = need("gather_rows", idx, "indices");
    return [{ dtype: xi.dtype, shape: [ii.shape[0], lastDim(xi.shape)] }];
  },
  ref([x, idx]) {
    const h = x!.cols;
    const iv = idx!.i32;
    const out = new Float32Array(iv.length * h);
    for (let i = 0; i < iv.length; i++) {
      if (iv[i] < 0 || iv[i] >= x!.rows)
        throw new Error(`gather_rows: index ${iv[i]} out of range 0..${x!.rows - 1}`);
      out.set(x!.f32.subarray(iv[i] * h, (iv[i] + 1) * h), i * h);
    }
    return [new HostTensor([iv.length, h], out)];
  },
});
