// Weight bytes each rank of an engine holds (on the GPU, and on disk for real-weight engines), also for
// random-weight engines, whose files store seeds instead:
//   npx tsx scripts/engine-bytes.ts engines/llama [more engines…]
import { openEngine } from "../src/engine/reader.ts";
import { DTYPE_BYTES, numel } from "../src/ir/types.ts";

const GiB = 2 ** 30;
for (const dir of process.argv.slice(2)) {
  const e = openEngine(dir);
  const { tp, quant, dtype, kv_cache_dtype } = e.config.build;
  const perRank = e.ranks.map((r) => {
    const values = new Map(r.header.values.map((v) => [v.id, v]));
    let bytes = 0;
    for (const w of r.header.weights) {
      const v = values.get(w.value)!;
      bytes += numel(v.shape) * DTYPE_BYTES[v.dtype];
    }
    return bytes;
  });
  const fmt = (b: number) => `${b} B (${(b / GiB).toFixed(3)} GiB)`;
  console.log(
    `${dir}: tp ${tp}, ${dtype}, quant ${quant}, kv ${kv_cache_dtype}: ` +
      perRank.map((b, i) => `rank ${i} ${fmt(b)}`).join(", "),
  );
}
