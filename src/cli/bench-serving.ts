// tsllm-bench prepare-dataset and throughput: trtllm-bench's dataset format and offline throughput
// benchmark over the batch manager.
import { type Command, Option } from "commander";
import { filesIn } from "../engine/output-dir.ts";
import { openEngine } from "../engine/reader.ts";
import { describeWarmup, type WarmupReport } from "../serving/batch-manager.ts";
import {
  type DatasetEntry,
  datasetName,
  datasetParts,
  isDatasetText,
  readDataset,
  STDIN_DATASET,
  tokenNormDistEntries,
} from "../serving/dataset.ts";
import { openBatchManager } from "../serving/open.ts";
import { formatReport, runRequests, summarize } from "../serving/throughput.ts";
import { overKvPool, overMaxSeqLen } from "../serving/types.ts";
import { findTokenizer } from "../text/engine-files.ts";
import {
  float,
  fp8ContextFmhaOption,
  int,
  kvFractionOption,
  limitOption,
  main,
  NUMPY_SEED,
  nonEmpty,
  schedulerPolicyOption,
  stdinIsTerminal,
  writeParts,
} from "./common.ts";
import {
  checkOutputFile,
  FORCE_HELP,
  jsonReport,
  type OutputFileOptions,
  writeOutputFile,
} from "./output-file.ts";
import { progress } from "./progress.ts";

export function addServingCommands(program: Command): void {
  program
    .command("prepare-dataset")
    .description(
      "Write a synthetic benchmark dataset as trtllm-bench reads it (TensorRT-LLM prepare_dataset.py " +
        'token-norm-dist): one {"task_id", "input_ids", "output_tokens"} JSON object per line, lengths drawn ' +
        "from normal distributions (stdev 0: all equal), token ids uniform over the engine's vocabulary.",
    )
    .argument("<engine>", "engine directory (for its vocabulary)")
    .requiredOption("--num-requests <n>", "requests to write", int("--num-requests", { min: 1 }))
    .requiredOption("--input-mean <n>", "mean prompt length", float("--input-mean", { min: 1 }))
    .option("--input-stdev <n>", "prompt length standard deviation", float("--input-stdev", { min: 0 }), 0)
    .requiredOption("--output-mean <n>", "mean output length", float("--output-mean", { min: 1 }))
    .option("--output-stdev <n>", "output length standard deviation", float("--output-stdev", { min: 0 }), 0)
    .option("--seed <n>", "random seed", int("--seed", NUMPY_SEED), 0)
    .option("--output <file>", "write here instead of stdout", nonEmpty("--output"))
    .option("--force", FORCE_HELP)
    .action((dir: string, o) =>
      main(async () => {
        const out: OutputFileOptions = {
          flag: "--output",
          what: "a dataset",
          isOurs: isDatasetText,
          force: o.force,
          inputs: filesIn(dir),
        };
        if (o.output) checkOutputFile(o.output, out);
        const { vocabSize, maxPositionEmbeddings } = openEngine(dir).config.facts;
        // A request no runtime limit can run (--max-seq-len goes up to the model's context, no further) is no
        // benchmark: refused in one line. (A prompt of 300 million tokens ran V8 out of heap, exit 134.)
        const tokens = Math.ceil(o.inputMean) + Math.ceil(o.outputMean);
        if (tokens > maxPositionEmbeddings)
          throw new Error(
            `--input-mean ${o.inputMean} + --output-mean ${o.outputMean}: requests of ${tokens} tokens exceed the ` +
              `model's context (max_position_embeddings ${maxPositionEmbeddings})`,
          );
        const parts = datasetParts(tokenNormDistEntries({ ...o, vocabSize }));
        if (o.output) writeOutputFile(o.output, parts, out);
        else await writeParts(process.stdout, parts);
      }),
    );

  program
    .command("throughput")
    .description(
      "Offline throughput over a dataset (trtllm-bench throughput): every request queued at once (or at most " +
        "--concurrency in flight), in-flight batching over the paged KV cache; prints request and token " +
        "throughput, TTFT / TPOT / inter-token / end-to-end latency percentiles, peak KV use and the GPU idle gap " +
        "between steps. Requests generate exactly output_tokens (eos ignored, as trtllm-bench) unless --eos.",
    )
    .argument("<engine>", "engine directory (tp 1)")
    .option(
      "--dataset <file>",
      "JSON lines: {task_id, input_ids | prompt, output_tokens} (prepare-dataset); '-' or left out: stdin",
      nonEmpty("--dataset"),
    )
    .addOption(
      new Option("--device <d>", "cuda (native runtime) or cpu (reference executor)")
        .choices(["cuda", "cpu"])
        .default("cuda"),
    )
    .addOption(limitOption("--max-batch-size"))
    .addOption(limitOption("--max-num-tokens"))
    .addOption(limitOption("--max-seq-len"))
    .addOption(kvFractionOption())
    .option("--kv-blocks <n>", "cap the KV pool at this many blocks", int("--kv-blocks", { min: 1 }))
    .addOption(schedulerPolicyOption())
    .option(
      "--concurrency <n>",
      "requests in flight at once (default: all)",
      int("--concurrency", { min: 1 }),
    )
    .option("--warmup <n>", "requests run first, untimed", int("--warmup", { min: 0 }), 2)
    // Tri-state: unset means on for cuda, off for cpu (the reference executor has no graphs or tuners).
    .option("--engine-warmup", "warm the runtime up first, untimed, as tsllm-serve does (default on cuda)")
    .option("--no-engine-warmup", "time the run from a cold runtime")
    .option(
      "--num-requests <n>",
      "use only the first n requests of the dataset",
      int("--num-requests", { min: 1 }),
    )
    .option("--eos", "stop at the engine's eos ids")
    .option("--no-cuda-graphs", "run decode steps eagerly")
    .addOption(fp8ContextFmhaOption())
    .option("--no-overlap", "plan each step after the previous one's tokens are back (no host/GPU overlap)")
    .option("--json <file>", "also write the report as JSON", nonEmpty("--json"))
    .option("--force", FORCE_HELP)
    .action((dir: string, o) =>
      main(async () => {
        // No --dataset reads stdin, as trtllm-bench does (its --dataset: "Pass in a dataset file for parsing instead
        // of stdin."); from a terminal that would wait for typed lines with no word of why.
        const file: string = o.dataset ?? STDIN_DATASET;
        const dataset = datasetName(file);
        if (file === STDIN_DATASET && stdinIsTerminal())
          throw new Error("no dataset: give --dataset FILE or pipe one in (stdin is a terminal)");
        const json = jsonReport(o, "throughput", [
          ...filesIn(dir),
          ...(file === STDIN_DATASET ? [] : [file]),
        ]);
        const engine = openEngine(dir);
        const found = findTokenizer(dir);
        const encode = found.tok ? (t: string) => found.tok!.encode(t) : undefined;
        let entries: DatasetEntry[] = readDataset(file, {
          encode,
          vocabSize: engine.config.facts.vocabSize,
        });
        if (o.numRequests !== undefined) entries = entries.slice(0, o.numRequests);
        const bm = await openBatchManager(dir, {
          device: o.device,
          verify: false,
          policy: o.schedulerPolicy,
          maxBatchSize: o.maxBatchSize,
          maxNumTokens: o.maxNumTokens,
          maxSeqLen: o.maxSeqLen,
          kvCacheFreeGpuMemFraction: o.kvCacheFreeGpuMemFraction,
          kvBlocks: o.kvBlocks,
          cudaGraphs: o.cudaGraphs,
          fp8ContextFmha: o.fp8ContextFmha,
          overlap: o.overlap,
        });
        try {
          const L = bm.limits;
          for (const e of entries) {
            // file:line as every other refusal of a dataset line (the task id alone is not where it is).
            const where = `${dataset}${e.line === undefined ? "" : `:${e.line}`}: request ${e.taskId}`;
            const tooLong = overMaxSeqLen(e.inputIds.length, e.outputTokens, L.maxSeqLen, "output_tokens");
            if (tooLong) throw new Error(`${where}: ${tooLong} (raise --max-seq-len)`);
            // A request the KV pool can never hold was refused only at its submit: after every request before it
            // had run (a whole benchmark with --concurrency), naming neither its line nor output_tokens.
            const noRoom = overKvPool(e.inputIds.length, e.outputTokens, L, "output_tokens");
            if (noRoom)
              throw new Error(`${where}: ${noRoom} (raise --kv-blocks or --kv-cache-free-gpu-mem-fraction)`);
          }
          const b = engine.config.build;
          const header = [
            `engine        ${dir} (${b.dtype}, kv ${b.kv_cache_dtype}, quant ${b.quant}, built for batch ${b.max_batch_size} / ${b.max_num_tokens} tokens / seq ${b.max_seq_len})`,
            `device        ${o.device}: ${bm.backendInfo.deviceName}`,
            `limits        max_batch_size ${L.maxBatchSize}, max_num_tokens ${L.maxNumTokens}, max_seq_len ${L.maxSeqLen}, KV ${L.kvBlocksTotal} blocks of ${L.tokensPerBlock} tokens`,
            `scheduler     ${bm.policy}, concurrency ${o.concurrency ?? "all"}, ${o.eos ? "stops at eos" : "eos ignored"}`,
            `dataset       ${dataset}: ${entries.length} requests`,
          ];
          process.stderr.write(`${header.join("\n")}\n`);
          // The one-time work of a fresh runtime (a decode graph captured per batch size, the GEMM algorithms of
          // each tuned row count timed, batch 1's step tuning) left out of the timed run, as a server does it
          // before it listens (InflightBatchManager.warmup).
          let warm: WarmupReport | undefined;
          if (o.engineWarmup ?? o.device === "cuda") {
            warm = await bm.warmup();
            const line = `warm-up       ${describeWarmup(warm)}, untimed`;
            header.push(line);
            process.stderr.write(`${line}\n`);
          }
          if (o.warmup > 0) await runRequests(bm, entries.slice(0, o.warmup), { stopAtEos: !!o.eos });
          const before = bm.stats();
          // progress(): off a terminal (a CI log) a line every few seconds; a bare cli-progress bar said nothing
          // there for the whole run.
          const bar = progress("throughput", entries.length, { unit: { name: "req" } });
          const run = await runRequests(bm, entries, {
            concurrency: o.concurrency,
            stopAtEos: !!o.eos,
            onProgress: (done, _total, tokens) => bar.update(done, `${tokens} output tokens`),
          });
          bar.stop();
          const after = bm.stats();
          const report = summarize(entries, run, {
            total: after.kvBlocksTotal,
            peakUsed: after.kvBlocksPeakUsed,
            preemptions: after.preemptions - before.preemptions,
          });
          process.stdout.write(`${formatReport(report, header)}\n`);
          json?.write({
            engine: dir,
            device: o.device,
            device_name: bm.backendInfo.deviceName,
            dtype: b.dtype,
            policy: bm.policy,
            limits: L,
            concurrency: o.concurrency ?? entries.length,
            dataset,
            engine_warmup: warm ? { batch_sizes: warm.batchSizes, steps: warm.steps, ms: warm.ms } : null,
            ...report,
          });
        } finally {
          await bm.shutdown();
        }
      }),
    );
}
