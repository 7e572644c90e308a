// tsllm-compile: Hugging Face checkpoint (or config + random weights) → optimised engine per rank.

import { compileEngine } from "../compile.ts";
import { SUPPORTED_SMS } from "../engine/format.ts";
import { fmtBytes } from "../report/bytes.ts";
import { command, int, list, main, nonEmpty } from "./common.ts";
import { type Progress, progress } from "./progress.ts";

const program = command(
  "tsllm-compile",
  "Compile a model file (TypeScript DSL) and a Hugging Face checkpoint into an engine directory: " +
    "config.json + rank{N}.engine per tensor-parallel rank + a fusion report. " +
    "With neither --checkpoint nor --config, builds the model file's small default config with random weights.",
)
  .argument("<model.ts>", "model file, e.g. models/llama.ts or your own")
  // An empty path (an unset variable in a script) is refused by name: --checkpoint "" failed naming no folder.
  .option(
    "--checkpoint <dir>",
    "Hugging Face checkpoint directory (config.json + safetensors, sharded or not)",
    nonEmpty("--checkpoint"),
  )
  .option(
    "--config <config.json>",
    "Hugging Face config.json to build with random weights (no checkpoint needed)",
    nonEmpty("--config"),
  )
  .option(
    "--tokenizer <dir>",
    "tokenizer folder to copy into the engine (default: the checkpoint's, if any)",
    nonEmpty("--tokenizer"),
  )
  .option("--random-weights", "store a seed per weight instead of bytes (benchmarks; implied by --config)")
  .option("--seed <n>", "seed of random weights", int("--seed", { min: 0 }), 0)
  .requiredOption("--sm <n>", `target GPU architecture (${SUPPORTED_SMS.join(", ")})`, int("--sm"))
  .option("--tp <n>", "tensor-parallel ranks (1, 2, 4, 8)", int("--tp", { min: 1 }), 1)
  .option(
    "--moe-ep-size <n>",
    "mixture-of-experts layers: split the experts over n groups of the --tp ranks (expert parallelism); " +
      "each expert's intermediate dim splits over the tp/n ranks of its group (TensorRT-LLM's moe_tp_size)",
    int("--moe-ep-size", { min: 1 }),
    1,
  )
  .option("--dtype <t>", "activation and weight dtype: auto (the checkpoint's), fp32, fp16, bf16", "auto")
  .option("--kv-cache-dtype <t>", "KV cache dtype: fp16, bf16, fp32, fp8 (default: the engine dtype)")
  .option("--quant <q>", "weight quantisation: none, fp8, int8-wo, int4-wo", "none")
  // No commander default: compileEngine refuses a --group-size given with another --quant (int8-wo and fp8 scales
  // are per channel) and takes 128 when none is given.
  .option("--group-size <n>", "int4-wo group size (default: 128)", int("--group-size", { min: 1 }))
  .option("--max-batch-size <n>", "most sequences in one step", int("--max-batch-size", { min: 1 }), 256)
  .option(
    "--max-seq-len <n>",
    "longest sequence, prompt + output (default: min(max_position_embeddings, 8192))",
    int("--max-seq-len", { min: 1 }),
  )
  .option(
    "--max-num-tokens <n>",
    "most tokens in one step (packed, all sequences)",
    int("--max-num-tokens", { min: 1 }),
    8192,
  )
  .option(
    "--tokens-per-block <n>",
    "KV cache block size in tokens",
    int("--tokens-per-block", { min: 1 }),
    32,
  )
  .option("--disable-pass <name>", "skip a pass (repeatable, comma separated)", list, [])
  .option("--dump-ir-after <name>", "print the IR after a pass (repeatable)", list, [])
  .option("--print-ir", "print the IR before any pass")
  .option(
    "--emit <what>",
    "engine, or onnx: rank{N}.onnx + external weights per rank (for trtexec / ONNX Runtime)",
    "engine",
  )
  .requiredOption(
    "-o, --output <dir>",
    "engine directory to write (an earlier tsllm engine there is replaced)",
  )
  .option("--force", "replace an output that is not a tsllm engine (never /, home, . or its ancestors)");

/** tsllm-compile on `argv` (as process.argv: node, script, then the arguments). */
export async function tsllmCompile(argv: readonly string[]): Promise<void> {
  program.parse(argv);
  const o = program.opts();
  const [modelFile] = program.args;
  const t0 = performance.now();
  let bar: Progress | null = null;
  const { config, pipeline } = await compileEngine({
    modelFile,
    checkpoint: o.checkpoint,
    tokenizer: o.tokenizer,
    config: o.config,
    randomWeights: o.randomWeights,
    seed: o.seed,
    sm: o.sm,
    tp: o.tp,
    moeEpSize: o.moeEpSize,
    dtype: o.dtype,
    kvCacheDtype: o.kvCacheDtype,
    quant: o.quant,
    groupSize: o.groupSize,
    maxBatchSize: o.maxBatchSize,
    maxSeqLen: o.maxSeqLen,
    maxNumTokens: o.maxNumTokens,
    tokensPerBlock: o.tokensPerBlock,
    out: o.output,
    force: o.force,
    emit: o.emit,
    disablePasses: o.disablePass,
    dumpIrAfter: o.dumpIrAfter,
    printIr: o.printIr,
    log: (s) => process.stdout.write(`${s}\n`),
    onProgress: (done, total, name) => {
      bar ??= progress("weights", total, { unit: "bytes" });
      bar.update(done, name);
    },
  });
  (bar as Progress | null)?.stop();
  if (pipeline.summary) process.stdout.write(`${pipeline.summary}\n`);
  const bytes = config.ranks.reduce((a, r) => a + r.bytes, 0);
  const secs = (performance.now() - t0) / 1000;
  process.stdout.write(
    `wrote ${o.output}: ${config.ranks.length} rank(s), ${fmtBytes(bytes)}, ${config.build.dtype}, sm ${config.build.sm}` +
      `${config.build.random_weights ? ", random weights" : ""} in ${secs.toFixed(1)} s\n`,
  );
}

await main(() => tsllmCompile(process.argv));
