// tsllm-bench: timings of an engine on the GPU, with the memory-bandwidth roofline measured in the same run.
import { filesIn } from "../engine/output-dir.ts";
import { openEngine } from "../engine/reader.ts";
import { describeLoadPhases, measureCopyBandwidth } from "../native/binding.ts";
import { loadVerified } from "../native/executor.ts";
import { kernelReport } from "../native/kernel-report.ts";
import { decodeStepWeightBytes } from "../native/roofline.ts";
import { addServeBenchCommand } from "./bench-serve.ts";
import { addServingCommands } from "./bench-serving.ts";
import { command, fp8ContextFmhaOption, int, main, nonEmpty } from "./common.ts";
import { FORCE_HELP, jsonReport } from "./output-file.ts";

const program = command(
  "tsllm-bench",
  "Benchmarks of an engine: latency (static batch, GPU), prepare-dataset and throughput (in-flight batching).",
);

program
  .command("latency")
  .description(
    "Generate a batch of random prompts and report time to first token, time per output token and output " +
      "tokens/s, after warm-up; then the HBM roofline of one decode step (the weights it reads — all but the " +
      "embedding rows not gathered and the experts a batch is not routed to — and the KV cache, once) at the " +
      "device-to-device copy bandwidth measured in this run.",
  )
  .argument("<engine>", "engine directory (tp 1)")
  .option(
    "--batch-size <n>",
    "sequences decoded together (repeatable as 1,8,64)",
    (v: string) =>
      v
        .split(",")
        .map(int("--batch-size", { min: 1 }))
        .join(","),
    "1",
  )
  .option("--input-len <n>", "prompt tokens", int("--input-len", { min: 1 }), 128)
  .option("--output-len <n>", "generated tokens", int("--output-len", { min: 1 }), 128)
  .option("--warmup <n>", "untimed runs first", int("--warmup", { min: 0 }), 1)
  .option("--runs <n>", "timed runs (median reported)", int("--runs", { min: 1 }), 3)
  .option("--no-cuda-graphs", "decode without CUDA graphs")
  .addOption(fp8ContextFmhaOption())
  .option("--json <file>", "also write the figures as JSON", nonEmpty("--json"))
  .option("--force", FORCE_HELP)
  .option("--verbose", "after the runs: which kernels ran, and the runtime's prologue fusions")
  .option("--no-verify", "skip the content-hash check while loading")
  .action(async (dir: string, o) =>
    main(async () => {
      const report = jsonReport(o, "latency", filesIn(dir));
      const engine = openEngine(dir);
      const h = engine.ranks[0].header;
      const batches = String(o.batchSize).split(",").map(Number);
      const maxBatch = Math.max(...batches);
      const cuda = loadVerified(engine.ranks[0], {
        verify: o.verify,
        cudaGraphs: o.cudaGraphs,
        fp8ContextFmha: o.fp8ContextFmha,
        maxSeqLen: Math.min(h.limits.max_seq_len, o.inputLen + o.outputLen + 1),
      });
      const ls = cuda.loadStats;
      process.stdout.write(
        `load: ${(ls.fileBytes / 1e9).toFixed(2)} GB in ${ls.seconds.toFixed(2)} s (${(ls.fileBytes / 1e9 / ls.seconds).toFixed(2)} GB/s, ` +
          `CUDA setup, upload and KV cache; content hash ${o.verify ? "checked in the same pass" : "not checked"})\n`,
      );
      if (ls.phases) process.stdout.write(`${describeLoadPhases(ls.phases)}\n`);
      const info = cuda.info();
      const { quant, kv_cache_dtype } = engine.config.build;
      process.stdout.write(
        `${info.gpuName} (sm ${info.gpuSm}), engine ${h.dtype} sm ${h.sm}, quant ${quant}, kv cache ${kv_cache_dtype}, ` +
          `weights ${(info.weightBytes / 1e9).toFixed(2)} GB, kv blocks ${info.kvBlocksTotal}\n`,
      );
      if (maxBatch > info.maxBatchSize)
        throw new Error(`--batch-size ${maxBatch} exceeds the engine's max_batch_size ${info.maxBatchSize}`);

      const bw = measureCopyBandwidth(1 << 30);
      process.stdout.write(`device-to-device copy: ${(bw / 1e9).toFixed(0)} GB/s (bytes read + written)\n`);
      const kvElem = h.kv_cache.dtype === "fp32" ? 4 : h.kv_cache.dtype === "fp8" ? 1 : 2;
      const kvPerToken = 2 * h.kv_cache.num_layers * h.kv_cache.num_kv_heads * h.kv_cache.head_dim * kvElem;

      const results = [];
      for (const B of batches) {
        let seed = 12345 + B;
        const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0);
        const prompts = Array.from({ length: B }, () =>
          Int32Array.from({ length: o.inputLen }, () => rand() % info.vocabSize),
        );
        for (let i = 0; i < o.warmup; i++) cuda.generate(prompts, o.outputLen);
        const runs = Array.from({ length: o.runs }, () => cuda.generate(prompts, o.outputLen));
        runs.sort((a, b) => a.totalMs - b.totalMs);
        const r = runs[Math.floor(runs.length / 2)];
        // TPOT here is the median decode step of the median run (a static batch: every sequence's step), not
        // trtllm-bench's mean (e2e - ttft) / (output - 1); one output token has no decode step: n/a (null in --json).
        const steps = Array.from(r.stepMs).sort((a, b) => a - b);
        const tpot = steps.length ? steps[Math.floor(steps.length / 2)] : Number.NaN;
        const tokS = (B * o.outputLen) / (r.totalMs / 1000);
        // Roofline of a decode step at mean context length (prompt + half the output): the weight bytes the step
        // reads (roofline.ts: embedding rows gathered, only the routed experts of moe layers) and the KV cache.
        const ctx = o.inputLen + o.outputLen / 2;
        const weights = decodeStepWeightBytes(h, B);
        const stepBytes = weights.bytes + B * ctx * kvPerToken;
        const rooflineMs = (stepBytes / bw) * 1000;
        const rooflineTokS = (B * 1000) / rooflineMs;
        const decodeTokS = (B * 1000) / tpot;
        const row = {
          batch: B,
          ttft_ms: r.ttftMs,
          tpot_ms: tpot,
          output_tok_s: tokS,
          decode_tok_s: decodeTokS,
          step_weight_bytes: weights.bytes,
          roofline_step_ms: rooflineMs,
          roofline_tok_s: rooflineTokS,
          pct_of_roofline: (100 * rooflineMs) / tpot,
        };
        results.push(row);
        const fx = (x: number, d: number) => (Number.isFinite(x) ? x.toFixed(d) : "n/a");
        process.stdout.write(
          `batch ${B}: TTFT ${r.ttftMs.toFixed(2)} ms, TPOT ${fx(tpot, 3)} ms, ${tokS.toFixed(1)} output tok/s ` +
            `(decode ${fx(decodeTokS, 1)} tok/s; roofline ${rooflineMs.toFixed(3)} ms/step = ${rooflineTokS.toFixed(1)} tok/s, ` +
            `${fx(row.pct_of_roofline, 1)}% of roofline)\n`,
        );
        if (weights.expertBytes > 0)
          process.stdout.write(
            `  roofline weights: ${(weights.bytes / 1e9).toFixed(2)} GB read per step of ${(weights.totalBytes / 1e9).toFixed(2)} GB ` +
              `stored (moe: ${(100 * weights.expertFraction).toFixed(1)}% of the ${(weights.expertBytes / 1e9).toFixed(2)} GB of experts, ` +
              "the expected share of distinct experts a batch this size is routed to)\n",
          );
      }
      if (o.verbose) for (const l of kernelReport(cuda.nodeStats())) process.stdout.write(`${l}\n`);
      cuda.close();
      report?.write({
        gpu: info.gpuName,
        copy_gb_s: bw / 1e9,
        load_s: ls.seconds,
        load_gb_s: ls.fileBytes / 1e9 / ls.seconds,
        results,
      });
    }),
  );

addServingCommands(program);
addServeBenchCommand(program);

await program.parseAsync();
