// What the first requests after load cost, with or without the batch manager's warm-up (tsllm-serve runs it unless
// --no-warmup): one lone request, the same again, then 4 at once, 4 again, 16 at once, 16 again; TTFT and end-to-end
// of each (the worst of a group).
//   npx tsx scripts/first-requests.ts ENGINE [--warmup] [--device cuda|cpu]
import { performance } from "node:perf_hooks";
import { describeWarmup } from "../src/serving/batch-manager.ts";
import { openBatchManager } from "../src/serving/open.ts";

const [dir, ...flags] = process.argv.slice(2);
if (!dir) throw new Error("usage: first-requests.ts ENGINE [--warmup] [--device cuda|cpu]");
const device = flags.includes("--device") ? (flags[flags.indexOf("--device") + 1] as "cuda" | "cpu") : "cuda";
const t0 = performance.now();
const bm = await openBatchManager(dir, { device });
console.log(`load: ${(performance.now() - t0).toFixed(0)} ms`);
if (flags.includes("--warmup")) {
  const w = await bm.warmup();
  console.log(`warm-up: ${describeWarmup(w)}`);
}
const prompt = Array.from({ length: 128 }, (_, i) => (i * 7919 + 13) % bm.vocabSize);
const req = (k: number) => ({
  promptIds: prompt.map((t) => (t + k) % bm.vocabSize),
  maxNewTokens: 32,
  ignoreEos: true,
});
for (const [label, n] of [
  ["first lone request", 1],
  ["second lone request", 1],
  ["first 4 at once", 4],
  ["next 4 at once", 4],
  ["first 16 at once", 16],
  ["next 16 at once", 16],
] as const) {
  const rs = await Promise.all(Array.from({ length: n }, (_, k) => bm.submit(req(k)).done));
  const worst = (f: (r: (typeof rs)[number]) => number) => Math.max(...rs.map(f)).toFixed(1);
  console.log(
    `${label}: TTFT ${worst((r) => r.timings.ttftMs)} ms, end to end ${worst((r) => r.timings.e2eMs)} ms`,
  );
}
await bm.shutdown();
