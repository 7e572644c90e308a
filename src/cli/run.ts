// tsllm-run: generate with an engine through the batch manager, or verify it against a golden logits file.
import { Option, type OptionValues } from "commander";
import type { EngineConfig } from "../engine/format.ts";
import { openEngine } from "../engine/reader.ts";
import { openExecutor } from "../executor/open.ts";
import { ReferenceExecutor } from "../executor/reference.ts";
import { checkGolden, checkGoldenFits, defaultTolerance, readGolden } from "../golden.ts";
import { describeLoadPhases } from "../native/binding.ts";
import { CudaExecutor } from "../native/executor.ts";
import { kernelReport } from "../native/kernel-report.ts";
import { fmtBytes } from "../report/bytes.ts";
import type { InflightBatchManager } from "../serving/batch-manager.ts";
import { openBatchManager } from "../serving/open.ts";
import { requireTokenizer } from "../text/engine-files.ts";
import {
  cancelWhenReaderGone,
  command,
  float,
  fp8ContextFmhaOption,
  int,
  limitOption,
  main,
  nonEmpty,
  parseIds,
  seedArg,
  stdinIsTerminal,
} from "./common.ts";
import { type Progress, progress } from "./progress.ts";
import { generateIds, readPrompts } from "./run-generate.ts";
import { interactiveChat, readChatFile, runText, type TextRunOptions } from "./run-text.ts";
import { checkPromptsFit, checkStopIds } from "./validate.ts";

const program = command(
  "tsllm-run",
  "Run an engine. Either generate from prompts given as token ids (in-flight batched; one line of " +
    "comma-separated generated ids per prompt on stdout, in prompt order, printed as they come), or check " +
    "the engine against a golden logits file (prefill + teacher-forced decode; see README 'Golden files').",
)
  .argument("<engine>", "engine directory written by tsllm-compile")
  .argument("[prompt]", "text prompt (the engine's tokenizer encodes it; the text streams back)")
  .option("--prompt <text>", "text prompt (same as the positional one)")
  .option(
    "--chat [file]",
    "messages JSON [{role, content}] through the chat template (- for stdin); without FILE on a terminal, a conversation",
  )
  .option(
    "--stop <text>",
    "stop string (repeatable): generation ends before it",
    (v: string, p: string[] = []) => [...p, v],
  )
  .option(
    "--json",
    "text mode: print one JSON object (prompt_ids, ids, text, finish_reason, timings) instead of the text",
  )
  .addOption(
    new Option("--device <d>", "cpu (reference executor, fp32 math) or cuda (native runtime)")
      .choices(["cpu", "cuda", "auto"])
      .default("auto"),
  )
  .option(
    "--input-ids <ids>",
    "prompt token ids, comma separated; repeat for several prompts",
    (v: string, p: string[] = []) => [...p, v],
  )
  .option(
    "--input-file <jsonl>",
    'prompts, one JSON object per line: {"input_ids": [...]} (optional "output_tokens" overrides --max-new-tokens)',
    nonEmpty("--input-file"),
  )
  .option("--max-new-tokens <n>", "tokens to generate per prompt", int("--max-new-tokens", { min: 0 }), 16)
  .option("--temperature <t>", "sampling temperature (0 = greedy)", float("--temperature", { min: 0 }), 0)
  .option("--top-k <k>", "sample among the k most likely tokens (0 = all)", int("--top-k", { min: 0 }), 0)
  .option("--top-p <p>", "nucleus sampling mass (1 = all)", float("--top-p", { above: 0, max: 1 }), 1)
  .option("--seed <n>", "sampling seed", seedArg("--seed"), 0)
  .option("--ignore-eos", "do not stop at the engine's eos ids (generation_config.json / config.json)")
  .option(
    "--stop-token-ids <ids>",
    "comma-separated token ids that also end generation (kept as the last id, left out of the text)",
  )
  .addOption(limitOption("--max-batch-size"))
  .addOption(limitOption("--max-num-tokens"))
  .addOption(limitOption("--max-seq-len"))
  .addOption(fp8ContextFmhaOption())
  .option("--golden <file>", "golden.safetensors to verify against", nonEmpty("--golden"))
  .option(
    "--tolerance <x>",
    "max |Δlogit| allowed with --golden (default by engine: fp32 on cpu 1e-3, fp16/bf16 0.05, int8-wo 0.1, fp8 0.5, int4-wo 1.25; +0.2 with an fp8 KV cache)",
    float("--tolerance", { above: 0 }),
  )
  .option("--no-verify", "skip the content-hash check of the rank files (checked while loading otherwise)")
  .option(
    "--verbose",
    "how long loading took and how fast it read the engine; on cuda also which kernels ran, and the runtime's prologue fusions (to stderr)",
  );

/**
 * Progress of loading a large engine (the CPU loader reports bytes as they stream) and, with --verbose,
 * the load time and GB/s once loaded.
 */
function loadReport(dir: string, o: { verbose?: boolean; verify?: boolean }) {
  const bytes = openEngine(dir).config.ranks.reduce((a, r) => a + r.bytes, 0);
  let bar: Progress | null = null;
  const t0 = performance.now();
  return {
    onLoadBytes:
      o.verbose || bytes >= 256 << 20
        ? (done: number, total: number) => (bar ??= progress("load", total, { unit: "bytes" })).update(done)
        : undefined,
    loaded(phases?: string) {
      (bar as Progress | null)?.stop();
      const secs = (performance.now() - t0) / 1000;
      if (o.verbose) {
        process.stderr.write(
          `loaded ${dir}: ${fmtBytes(bytes)} in ${secs.toFixed(2)} s, ${(bytes / 1e9 / secs).toFixed(2)} GB/s, ` +
            `content hash ${o.verify ? "checked in the same pass" : "not checked (--no-verify)"}\n`,
        );
        if (phases) process.stderr.write(`${phases}\n`);
      }
    },
  };
}

/**
 * Progress of generating on a large engine (a CPU step of a 7B engine takes seconds): tokens computed
 * (prompt and generated) out of what the prompts ask for, on the same rule as load progress.
 */
function stepProgress(bm: InflightBatchManager, dir: string, totalTokens: number, o: { verbose?: boolean }) {
  const bytes = openEngine(dir).config.ranks.reduce((a, r) => a + r.bytes, 0);
  if (!(o.verbose || bytes >= 256 << 20) || totalTokens <= 0) return () => {};
  const bar = progress("generate", totalTokens, { unit: { name: "tok" } });
  let done = 0;
  bm.onStep = (s) => bar.update((done = Math.min(totalTokens, done + s.tokens)));
  return () => {
    bm.onStep = undefined;
    bar.stop();
  };
}

async function verifyGolden(dir: string, config: EngineConfig, o: Record<string, never>): Promise<void> {
  // The golden file is read and checked against the engine before the (possibly long) load.
  const golden = readGolden(o.golden);
  const { facts, build } = config;
  checkGoldenFits(golden, o.golden, {
    vocabSize: facts.vocabSize,
    maxSeqLen: build.max_seq_len,
    maxNumTokens: build.max_num_tokens,
  });
  const report = loadReport(dir, o);
  const ex = await openExecutor(dir, {
    device: o.device,
    verify: o.verify,
    onLoadBytes: report.onLoadBytes,
    fp8ContextFmha: o.fp8ContextFmha,
  });
  const phases = ex instanceof CudaExecutor ? ex.engine.loadStats.phases : undefined;
  report.loaded(phases && describeLoadPhases(phases));
  try {
    const report = checkGolden(ex, golden);
    const tol = o.tolerance ?? defaultTolerance(build, ex instanceof ReferenceExecutor);
    report.perPrompt.forEach((p, i) =>
      process.stdout.write(
        `prompt ${i}: max |Δlogit| ${p.maxAbs.toExponential(3)} (prefill ${p.prefillMaxAbs.toExponential(3)}, decode ${p.decodeMaxAbs.toExponential(3)}), top-1 agreement ${p.top1Agree}/${p.positions}\n`,
      ),
    );
    process.stdout.write(`overall: max |Δlogit| ${report.maxAbs.toExponential(3)} (tolerance ${tol})\n`);
    if (!(report.maxAbs <= tol))
      throw new Error(`max |Δlogit| ${report.maxAbs.toExponential(3)} exceeds tolerance ${tol}`);
  } finally {
    if (o.verbose && ex instanceof CudaExecutor)
      for (const l of kernelReport(ex.engine.nodeStats())) process.stderr.write(`${l}\n`);
    ex.close();
  }
}

/** --stop-token-ids, parsed before the engine loads (none when not given). */
function stopTokenIdsOf(o: OptionValues, config: EngineConfig): number[] {
  const ids = o.stopTokenIds === undefined ? [] : parseIds(o.stopTokenIds, "--stop-token-ids");
  checkStopIds(ids, config);
  return ids;
}

async function openManager(dir: string, o: OptionValues) {
  const report = loadReport(dir, o);
  const bm = await openBatchManager(dir, {
    device: o.device,
    verify: o.verify,
    onLoadBytes: report.onLoadBytes,
    maxBatchSize: o.maxBatchSize,
    maxNumTokens: o.maxNumTokens,
    maxSeqLen: o.maxSeqLen,
    fp8ContextFmha: o.fp8ContextFmha,
  });
  report.loaded(bm.backendInfo.loadPhases);
  return bm;
}

async function runTextMode(
  dir: string,
  config: EngineConfig,
  text: string | undefined,
  o: OptionValues,
): Promise<void> {
  if (text !== undefined && o.chat !== undefined) throw new Error("give a text prompt or --chat, not both");
  if (o.inputIds || o.inputFile)
    throw new Error("give a text prompt (or --chat) or --input-ids/--input-file, not both");
  const tok = requireTokenizer(dir, text !== undefined ? "a text prompt" : "--chat");
  const interactive = o.chat === true && stdinIsTerminal();
  // Refuse bad input before the engine loads.
  const promptIds = interactive
    ? []
    : text !== undefined
      ? tok.encode(text)
      : tok.applyChatTemplate(readChatFile(o.chat === true ? "-" : o.chat), { addGenerationPrompt: true })
          .ids;
  const stopTokenIds = stopTokenIdsOf(o, config);
  const bm = await openManager(dir, o);
  const opts: TextRunOptions = {
    maxNewTokens: o.maxNewTokens,
    sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed },
    ignoreEos: !!o.ignoreEos,
    stopTokenIds,
    stop: o.stop ?? [],
    json: !!o.json,
    out: process.stdout,
  };
  const stopListening = cancelWhenReaderGone(bm, process.stdout);
  try {
    if (interactive) await interactiveChat(bm, tok, opts);
    else await runText(bm, tok, promptIds, opts);
  } finally {
    stopListening();
    await bm.shutdown();
  }
}

/** tsllm-run on `argv` (laid out as process.argv); exported so that tests run it in-process. */
export async function tsllmRun(argv: readonly string[]): Promise<void> {
  program.parse(argv);
  const o = program.opts();
  const [dir] = program.args;
  // What can be checked without running is checked before the (possibly long) engine load.
  const config = openEngine(dir).config;
  if (program.args[1] !== undefined && o.prompt !== undefined)
    throw new Error("give the text prompt once: as an argument or --prompt, not both");
  const text = program.args[1] ?? o.prompt;
  if (o.golden) {
    if (text !== undefined || o.chat !== undefined || o.inputIds || o.inputFile)
      throw new Error(
        "--golden checks the golden file's own prompts: give no prompt, --chat, --input-ids or --input-file",
      );
    return verifyGolden(dir, config, o as Record<string, never>);
  }
  if (text !== undefined || o.chat !== undefined) return runTextMode(dir, config, text, o);
  if (o.stop || o.json) throw new Error("--stop and --json go with a text prompt or --chat");
  const prompts = readPrompts({ inputIds: o.inputIds, inputFile: o.inputFile, maxNewTokens: o.maxNewTokens });
  checkPromptsFit(prompts, config, o.maxSeqLen);
  const stopTokenIds = stopTokenIdsOf(o, config);
  const bm = await openManager(dir, o);
  const doneProgress = stepProgress(
    bm,
    dir,
    prompts.reduce((a, p) => a + p.ids.length + Math.max(0, p.maxNewTokens - 1), 0),
    o,
  );
  const stopListening = cancelWhenReaderGone(bm, process.stdout);
  try {
    await generateIds(bm, prompts, {
      sampling: { temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed },
      ignoreEos: !!o.ignoreEos,
      stopTokenIds,
      out: process.stdout,
    });
  } finally {
    stopListening();
    doneProgress();
    if (o.verbose) for (const l of bm.kernelReport()) process.stderr.write(`${l}\n`);
    await bm.shutdown();
  }
}

await main(() => tsllmRun(process.argv));
