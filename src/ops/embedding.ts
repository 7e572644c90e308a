import { need } from "./check.ts";
import { attrNum, defineOp } from "./registry.ts";
import { HostTensor } from "./tensor.ts";

// Token embedding lookup. `vocab_start` lets a tensor-parallel rank hold a slice of the table:
// ids outside its slice give zero rows, and an all_reduce after it assembles the full embedding.
defineOp({
  name: "embedding",
  inputs: ["ids", "table"],
  numOutputs: 1,
  doc: "rows of an embedding table",
  infer([ids, table]) {
    const i = need("embedding", ids, "ids");
    const t = need("embedding", table, "table");
    return [{ dtype: t.dtype, shape: [...i.shape, t.shape[1]] }];
  },
  ref([ids, table], attrs) {
    const idv = ids!.i32;
    const t = table!;
    const [rows, h] = t.shape;
    const start = attrNum(attrs, "vocab_start", 0);
    const out = new Float32Array(idv.length * h);
    for (let i = 0; i < idv.length; i++) {
      const r = idv[i] - start;
      if (r >= 0 && r < rows) out.set(t.f32.subarray(r * h, (r + 1) * h), i * h);
    }
    return [new HostTensor([idv.length, h], out)];
  },
});
