// One summary of the result files scripts/gpu-acceptance.sh leaves in a folder (tsllm-bench latency / throughput
// --json reports, the peer's JSON lines), with the ratios the issues ask for. Files that are absent are skipped.
//   node scripts/acceptance-summary.mjs RESULTS_DIR
import * as fs from "node:fs";

const dir = process.argv[2];
if (!dir || !fs.existsSync(dir)) {
  console.error(`acceptance-summary: no results folder ${dir ?? "(none given)"}`);
  process.exit(2);
}
const read = (f) => {
  try {
    return JSON.parse(fs.readFileSync(`${dir}/${f}`, "utf8"));
  } catch {
    return null;
  }
};
/** The peer prints one JSON line per batch size (after torch's own output). */
const peer = (f) => {
  try {
    return fs
      .readFileSync(`${dir}/${f}`, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l));
  } catch {
    return [];
  }
};
const f = (x, d = 1) => (typeof x === "number" && Number.isFinite(x) ? x.toFixed(d) : "n/a");
const row = (rep, batch) => rep?.results.find((r) => r.batch === batch);
const best = (rep) => rep?.results.reduce((a, b) => (b.output_tok_s > a.output_tok_s ? b : a));
const ratio = (a, b) => (a && b ? `${(a / b).toFixed(3)}x` : "n/a");

const gpu = ["quant-fp16.json", "l31-static.json", "l2-static.json"].map(read).find(Boolean)?.gpu;
console.log(`GPU: ${gpu ?? "n/a"}`);

console.log(
  "-- issue 13: Llama-2-7B, ISL/OSL 128/128, tsllm-bench latency (roofline: the engine's weight bytes + KV at the copy rate)",
);
const p7 = peer("peer7b.jsonl");
for (const e of ["fp16", "fp8", "int8", "int4"]) {
  const r = read(`quant-${e}.json`);
  const b1 = row(r, 1);
  const b64 = row(r, 64);
  if (!b1) continue;
  console.log(
    `${e.padEnd(5)} bs1 TPOT ${f(b1.tpot_ms, 3)} ms, ${f(b1.decode_tok_s)} tok/s, ${f(b1.pct_of_roofline)}% of ${f(b1.roofline_tok_s)}, ` +
      `TTFT ${f(b1.ttft_ms, 2)} ms; bs64 TPOT ${f(b64?.tpot_ms, 3)} ms, ${f(b64?.output_tok_s)} output tok/s; copy ${f(r.copy_gb_s, 0)} GB/s`,
  );
}
for (const p of p7) console.log(`peer bs${p.bs}: ${p.ms_per_step} ms/step, ${p.out_tok_s} output tok/s`);
const fp16 = read("quant-fp16.json");
const pb1 = p7.find((p) => p.bs === 1);
const pb64 = p7.find((p) => p.bs === 64);
if (fp16 && pb1)
  console.log(`fp16 bs1 decode / peer bs1: ${ratio(row(fp16, 1)?.decode_tok_s, pb1.out_tok_s)}`);
if (fp16 && pb64)
  console.log(`fp16 bs64 output / peer bs64: ${ratio(row(fp16, 64)?.output_tok_s, pb64.out_tok_s)}`);

const tput = (name, r) =>
  r &&
  console.log(
    `${name}: ${f(r.output_throughput_tok_s)} output tok/s, ${r.num_requests} requests; TTFT mean/p50/p90/p99 ` +
      `${["mean", "p50", "p90", "p99"].map((k) => f(r.ttft_ms[k], 2)).join(" / ")} ms; TPOT ` +
      `${["mean", "p50", "p90", "p99"].map((k) => f(r.tpot_ms[k], 2)).join(" / ")} ms; peak KV ${r.kv_blocks_peak_used} of ` +
      `${r.kv_blocks_total} blocks; peak batch ${r.admission.peak_batch}; held back by ` +
      `${Object.entries(r.admission.waiting_steps)
        .map(([k, v]) => `${k} ${v}`)
        .join(
          ", ",
        )} steps; full batch ${r.steps.full_batch.batch}: ${f(r.steps.full_batch.mean_step_ms, 3)} ms/step, ` +
      `host gap ${f(r.steps.full_batch.mean_host_gap_ms, 3)} ms (${f(r.steps.full_batch.host_gap_pct, 2)}%)`,
  );

console.log(
  "-- issue 11: 128/128 through the batch manager (tsllm-bench throughput) against static batches and the peer",
);
const l31 = read("l31-128-128.json");
const s31 = read("l31-static.json");
const p8 = peer("peer8b.jsonl").find((p) => p.bs === 256);
tput("8B bf16 128/128", l31);
for (const b of s31?.results ?? [])
  console.log(
    `8B bf16 static bs${b.batch}: ${f(b.output_tok_s)} output tok/s, decode step ${f(b.tpot_ms, 3)} ms`,
  );
if (p8) console.log(`peer 8B bf16 bs256: ${p8.ms_per_step} ms/step, ${p8.out_tok_s} output tok/s`);
if (l31 && s31)
  console.log(
    `batch manager / best static batch: ${ratio(l31.output_throughput_tok_s, best(s31).output_tok_s)}`,
  );
if (l31 && p8) console.log(`batch manager / peer bs256: ${ratio(l31.output_throughput_tok_s, p8.out_tok_s)}`);
const b1 = row(read("l31-bs1.json"), 1);
if (b1)
  console.log(
    `8B bf16 bs1: TPOT ${f(b1.tpot_ms, 3)} ms, ${f(b1.decode_tok_s)} tok/s, ${f(b1.pct_of_roofline)}% of roofline`,
  );
tput("8B FP8 128/128", read("l31fp8-128-128.json"));
const l2 = read("l2-128-128.json");
const s2 = read("l2-static.json");
tput("7B fp16 128/128", l2);
const s2b = row(s2, 256);
if (s2b) console.log(`7B fp16 static bs256: ${f(s2b.output_tok_s)} output tok/s`);
if (l2 && s2b)
  console.log(`batch manager / static bs256: ${ratio(l2.output_throughput_tok_s, s2b.output_tok_s)}`);
const bm1 = read("l2-bs1.json");
const lat1 = row(s2, 1);
if (bm1 && lat1)
  console.log(
    `7B fp16 batch 1: batch manager TPOT p50 ${f(bm1.tpot_ms.p50, 3)} ms, latency TPOT ${f(lat1.tpot_ms, 3)} ms ` +
      `(${f(100 * (bm1.tpot_ms.p50 / lat1.tpot_ms - 1), 2)}%)`,
  );
// TensorRT-LLM's published H100 fp16 figures for these shapes (issue 11): the goal is at least 1.15x.
const trt = { "128-2048": 8883, "2048-128": 1859, "2048-2048": 4152 };
for (const [s, t] of Object.entries(trt)) {
  const r = read(`l31-${s}.json`);
  if (!r) continue;
  tput(`8B bf16 ${s.replace("-", "/")}`, r);
  console.log(
    `  vs TensorRT-LLM H100 fp16 ${t} tok/s: ${ratio(r.output_throughput_tok_s, t)} (goal >= 1.15x)`,
  );
}
