// tsllm-compile as a function: model file + Hugging Face config/checkpoint → passes → engine per rank.
import * as fs from "node:fs";
import * as path from "node:path";
import { type Checkpoint, INDEX_FILE, openCheckpoint } from "./checkpoint/checkpoint.ts";
import { isFloatDtype } from "./checkpoint/dtype.ts";
import { ConfigError } from "./checkpoint/errors.ts";
import { configArchitecture, configTorchDtype } from "./checkpoint/hf-config.ts";
import { modelFacts } from "./dsl/model.ts";
import { Module } from "./dsl/module.ts";
import { BuildConfig, ENGINE_DTYPES, type EngineConfig, valueDtypeOf } from "./engine/format.ts";
import type { RankProgram } from "./engine/header.ts";
import { checkOutputTarget, filesIn } from "./engine/output-dir.ts";
import { writeEngine } from "./engine/writer.ts";
import { printGraph } from "./ir/printer.ts";
import { type Graph, type QuantReport, shapeStr } from "./ir/types.ts";
import { describeError, loadModelFile } from "./model-file.ts";
import { bundledModelFor } from "./models.ts";
import { gpuWarnings } from "./native/ops.ts";
import { type OnnxDirConfig, writeOnnx } from "./onnx/write.ts";
import { type PipelineResult, runPipeline } from "./pipeline.ts";
import { tokenizerForEngine } from "./text/engine-files.ts";
import { TOKENIZER_FILES } from "./text/tokenizer.ts";
import { BOM_REFUSAL } from "./text/utf8.ts";
import { bindCheckpointWeights } from "./weights/check.ts";

export interface CompileOptions {
  modelFile: string;
  checkpoint?: string;
  /** A Hugging Face config.json to build with random weights. */
  config?: string;
  randomWeights?: boolean;
  seed?: number;
  sm: number;
  tp?: number;
  /** Expert-parallel groups of the tp ranks (mixture-of-experts layers); default 1. */
  moeEpSize?: number;
  /** fp32 | fp16 | bf16 | auto (the checkpoint's dtype; fp16 for fp32 checkpoints). */
  dtype?: string;
  kvCacheDtype?: string;
  quant?: string;
  groupSize?: number;
  maxBatchSize?: number;
  maxSeqLen?: number;
  maxNumTokens?: number;
  tokensPerBlock?: number;
  out: string;
  /** Tokenizer folder to copy into the engine (default: the checkpoint's, when it has tokenizer.json). */
  tokenizer?: string;
  /** Replace an output that is not a tsllm engine/ONNX directory (src/engine/output-dir.ts). */
  force?: boolean;
  /** engine (default) or onnx: rank{N}.onnx + external data per rank (src/onnx/). */
  emit?: "engine" | "onnx";
  disablePasses?: string[];
  dumpIrAfter?: string[];
  /** Log the IR before any pass (tsllm-compile --print-ir). */
  printIr?: boolean;
  onProgress?: (done: number, total: number, name: string) => void;
  log?: (line: string) => void;
}

export interface CompileResult {
  /** With --emit onnx: the files written (rank{N}.onnx, its bytes with the external data). */
  config: EngineConfig;
  pipeline: PipelineResult;
  onnx?: OnnxDirConfig;
}

export class BuildError extends Error {
  override name = "BuildError";
}

function readJson(file: string): unknown {
  if (!fs.existsSync(file)) throw new ConfigError(file, "file not found");
  let text: string | undefined;
  try {
    text = fs.readFileSync(file, "utf8");
    return JSON.parse(text);
  } catch (e) {
    if (text?.startsWith("\ufeff")) throw new ConfigError(file, BOM_REFUSAL);
    throw new ConfigError(file, `invalid JSON: ${(e as Error).message.replace(/\s+/g, " ")}`);
  }
}

/**
 * The JSON and tokenizer files a build reads whole must be files: reading a FIFO waits for a writer forever,
 * and a link to a device such as /dev/zero never ends (the safetensors reader refuses these itself).
 */
function checkInputFiles(o: CompileOptions): void {
  // A file given as a folder was Node's "ENOTDIR: not a directory, stat 'FILE/config.json'" (a missing one is said
  // by reading the checkpoint).
  for (const d of [o.checkpoint, o.tokenizer]) {
    const st = d === undefined ? undefined : fs.statSync(d, { throwIfNoEntry: false });
    if (d !== undefined && st && !st.isDirectory()) throw new ConfigError(d, "is not a folder");
  }
  const names = ["config.json", "generation_config.json", INDEX_FILE, ...TOKENIZER_FILES];
  const files = [
    o.config,
    ...[o.checkpoint, o.tokenizer].flatMap((d) => (d ? names.map((n) => path.join(d, n)) : [])),
  ];
  for (const f of files) {
    const st = f === undefined ? undefined : fs.statSync(f, { throwIfNoEntry: false });
    if (f !== undefined && st && !st.isFile())
      throw new ConfigError(
        f,
        st.isDirectory() ? "is a directory, not a file" : "is not a regular file (a FIFO, socket or device)",
      );
  }
}

/**
 * eos_token_id of a checkpoint's generation_config.json (what transformers' generate stops at; it wins
 * over config.json's when both exist), or undefined when the file or field is absent.
 */
function generationEosIds(checkpoint: string): number[] | undefined {
  const file = path.join(checkpoint, "generation_config.json");
  if (!fs.existsSync(file)) return undefined;
  const eos = (readJson(file) as { eos_token_id?: unknown }).eos_token_id;
  const ids = Array.isArray(eos) ? eos : eos == null ? [] : [eos];
  if (!ids.every((x) => Number.isInteger(x) && x >= 0))
    throw new ConfigError(
      file,
      `eos_token_id must be a token id or a list of them, got ${JSON.stringify(eos)}`,
    );
  return ids.length ? (ids as number[]) : undefined;
}

/**
 * The torch dtype of a checkpoint's weights, for a config.json that names none (older or hand-written ones):
 * transformers' dtype "auto" then takes the first floating-point weight's dtype (get_state_dict_dtype), so a
 * bf16 checkpoint loads as bf16 (its RoPE inv_freq rounded to bf16, as the goldens were); "float16" here gave
 * an fp16 engine with f16-rounded inv_freq instead.
 */
function checkpointTorchDtype(ckpt: Checkpoint): string | undefined {
  const torch: Record<string, string> = { F32: "float32", F16: "float16", BF16: "bfloat16" };
  for (const name of ckpt.names()) {
    const dtype = ckpt.info(name).dtype;
    if (isFloatDtype(dtype)) return torch[dtype];
  }
  return undefined;
}

/**
 * The build's checkpoint, opened when first needed and then kept: a config.json naming no dtype had it opened
 * (every shard's header read and parsed) once for the dtype and again for the weights.
 */
function checkpointOnce(dir: string) {
  let ckpt: Checkpoint | undefined;
  return {
    get: () => (ckpt ??= openCheckpoint(dir)),
    close: () => ckpt?.close(),
  };
}

export async function compileEngine(o: CompileOptions): Promise<CompileResult> {
  const ckpt = o.checkpoint === undefined ? undefined : checkpointOnce(o.checkpoint);
  try {
    return await compileWith(o, ckpt);
  } finally {
    ckpt?.close();
  }
}

async function compileWith(
  o: CompileOptions,
  once: ReturnType<typeof checkpointOnce> | undefined,
): Promise<CompileResult> {
  if (o.emit !== undefined && o.emit !== "engine" && o.emit !== "onnx")
    throw new BuildError(`--emit ${o.emit}: expected engine or onnx`);
  // The output is checked before any work: a build must never end by refusing (or replacing) it.
  const inputs = [o.modelFile, o.checkpoint, o.config, o.tokenizer].filter((p): p is string => !!p);
  // The folders' files are inputs too, and where they really are: `-o CHECKPOINT/model.safetensors --force` replaced
  // the weights the build had just read with the engine folder; and a Hugging Face cache's snapshot folder holds
  // links into its blobs folder, so `-o …/blobs --force` replaced the folder holding them.
  for (const dir of [o.checkpoint, o.tokenizer]) if (dir) inputs.push(...filesIn(dir));
  checkOutputTarget(o.out, { force: o.force, inputs });
  checkInputFiles(o);
  const model = await loadModelFile(o.modelFile);
  if (o.checkpoint && o.config) throw new BuildError("give either --checkpoint or --config, not both");
  const cfgSource = o.checkpoint
    ? path.join(o.checkpoint, "config.json")
    : (o.config ?? `${o.modelFile} (default config)`);
  const hfJson = o.checkpoint || o.config ? readJson(cfgSource) : model.defaultConfig;
  const archName = configArchitecture(hfJson);
  if (!archName || !model.architectures.includes(archName)) {
    const bundled = archName ? await bundledModelFor(archName) : undefined;
    throw new ConfigError(
      cfgSource,
      `unsupported architecture ${archName ? `"${archName}"` : "(none given)"} for ${o.modelFile} (supported: ${model.architectures.join(", ")})${bundled ? `; ${path.relative(process.cwd(), bundled.file)} implements it` : ""}`,
    );
  }
  // A pre-quantised checkpoint (FP8 with weight_scale tensors, GPTQ/AWQ qweight, …) keeps its weights as
  // stored values plus scales; nothing here reads the scales, so an FP8 one would build an engine of
  // wrongly scaled weights without a word (its e4m3 tensors have the shapes the model expects).
  // transformers dequantises by quantization_config or refuses: refuse, and say what to build from instead.
  const quantCfg = (hfJson as { quantization_config?: unknown } | null)?.quantization_config;
  if (o.checkpoint && quantCfg != null) {
    const method = (quantCfg as { quant_method?: unknown }).quant_method;
    throw new ConfigError(
      cfgSource,
      `"quantization_config"${typeof method === "string" ? ` (quant_method "${method}")` : ""}: pre-quantised checkpoints are not supported; build from the unquantised checkpoint (--quant fp8, int8-wo or int4-wo quantise it)`,
      "quantization_config",
    );
  }
  let cfg: ReturnType<typeof model.parseConfig>;
  try {
    cfg = model.parseConfig(hfJson, cfgSource);
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    throw new BuildError(
      `${o.modelFile}: parseConfig(): ${describeError(e, path.resolve(o.modelFile), o.modelFile)}`,
    );
  }
  let facts: ReturnType<typeof modelFacts>;
  try {
    facts = modelFacts(cfg);
  } catch (e) {
    // What parseConfig() returned is the model file's doing: name the file, as for a throw inside it.
    throw new BuildError(`${o.modelFile}: ${(e as Error).message}`);
  }
  const genEos = o.checkpoint ? generationEosIds(o.checkpoint) : undefined;
  if (genEos) facts.eosTokenIds = genEos;
  const randomWeights = o.randomWeights ?? !o.checkpoint;
  // Mistral-style sliding-window attention equals full attention while sequences fit in the window;
  // beyond it is not implemented, so the window caps max_seq_len instead of being silently ignored.
  // (A model file may hand on config.json's "sliding_window": null: no window, as below.)
  const window = cfg.slidingWindow;
  if (window != null && o.maxSeqLen !== undefined && o.maxSeqLen > window)
    throw new BuildError(
      `--max-seq-len ${o.maxSeqLen} exceeds the model's sliding_window ${window} (attention beyond the window is not implemented)`,
    );
  if (o.checkpoint && o.randomWeights)
    throw new BuildError("--random-weights builds from --config, not a checkpoint");

  const torchDtype = configTorchDtype(hfJson) ?? (once && checkpointTorchDtype(once.get())) ?? "float16";
  const dtype = !o.dtype || o.dtype === "auto" ? (torchDtype === "bfloat16" ? "bf16" : "fp16") : o.dtype;
  const parsed = BuildConfig.safeParse({
    sm: o.sm,
    tp: o.tp ?? 1,
    moe_ep_size: o.moeEpSize ?? 1,
    dtype,
    kv_cache_dtype: o.kvCacheDtype ?? (ENGINE_DTYPES.includes(dtype as never) ? dtype : "fp16"),
    quant: o.quant ?? "none",
    group_size: o.groupSize ?? 128,
    max_batch_size: o.maxBatchSize ?? 256,
    max_seq_len: o.maxSeqLen ?? Math.min(facts.maxPositionEmbeddings, window ?? Infinity, 8192),
    max_num_tokens: o.maxNumTokens ?? 8192,
    tokens_per_block: o.tokensPerBlock ?? 32,
    random_weights: randomWeights,
    seed: o.seed ?? 0,
  });
  if (!parsed.success) {
    const i = parsed.error.issues[0];
    const flag = `--${String(i.path[0]).replaceAll("_", "-")}`;
    const given = { sm: o.sm, tp: o.tp, dtype, tokens_per_block: o.tokensPerBlock }[String(i.path[0])];
    throw new BuildError(`${flag}${given !== undefined ? ` ${given}` : ""}: ${i.message}`);
  }
  const build = parsed.data;
  if (build.tp % build.moe_ep_size)
    throw new BuildError(
      `--moe-ep-size ${build.moe_ep_size}: must divide --tp ${build.tp} (the tp ranks form moe-ep-size expert groups)`,
    );
  if (o.groupSize !== undefined && build.quant !== "int4-wo")
    throw new BuildError(
      `--group-size ${o.groupSize} goes with --quant int4-wo (${build.quant === "none" ? "no --quant given" : `--quant ${build.quant} scales each output channel`}); it would be recorded and unused`,
    );
  // These passes are what --quant and --kv-cache-dtype fp8 do: without them the engine's config and header
  // would still say int8-wo / fp8 (read by tsllm-run's default tolerance, the bench roofline and the native
  // runtime's KV allocation) over full-precision weights or attention nodes that do not quantise their KV.
  for (const [pass, flag] of [
    ["quantize-weights", build.quant !== "none" && `--quant ${build.quant}`],
    ["quantize-kv", build.kv_cache_dtype === "fp8" && "--kv-cache-dtype fp8"],
  ] as const)
    if (flag && o.disablePasses?.includes(pass))
      throw new BuildError(
        `--disable-pass ${pass}: that pass is what ${flag} does; leave it on, or build without ${flag}`,
      );
  if (o.emit === "onnx" && build.quant !== "none")
    throw new BuildError(
      `--emit onnx: quantised builds (--quant ${build.quant}) are not exported yet; export with --quant none`,
    );
  // The exported past / present tensors hold the activations' dtype, so no other KV cache dtype is exported:
  // fp8 was refused as a quantised build (told to use --quant none, which it had); a bf16 cache under fp32
  // activations was exported as fp32 without a word.
  if (o.emit === "onnx" && build.kv_cache_dtype !== build.dtype)
    throw new BuildError(
      `--emit onnx: --kv-cache-dtype ${build.kv_cache_dtype} is not exported yet (past / present hold the --dtype ${build.dtype} activations); export without --kv-cache-dtype`,
    );
  if (build.max_seq_len > facts.maxPositionEmbeddings)
    o.log?.(
      `note: --max-seq-len ${build.max_seq_len} exceeds the model's max_position_embeddings ${facts.maxPositionEmbeddings}`,
    );

  const tokenizer = tokenizerForEngine(o, facts.vocabSize, o.log);

  // Build the graph. Weight dtype = engine dtype; quantisation passes change it later.
  const weightDtype = valueDtypeOf(build.dtype);
  const m = new Module(
    weightDtype,
    {
      maxBatchSize: build.max_batch_size,
      maxSeqLen: build.max_seq_len,
      maxNumTokens: build.max_num_tokens,
    },
    0.02,
    torchDtype,
  );
  try {
    model.forward(m, cfg);
  } catch (e) {
    throw new BuildError(
      `${o.modelFile}: forward(): ${describeError(e, path.resolve(o.modelFile), o.modelFile)}`,
    );
  }
  const graph: Graph = m.graph;
  if (graph.outputs.logits === undefined)
    throw new BuildError(`${o.modelFile}: forward() must call m.output("logits", …)`);
  // What every executor reads of an engine: float logits [rows, vocab_size] and a KV cache (one layer per
  // m.attention call). Without these checks a model file's slip (logits from the hidden state, or from the
  // input ids) built an engine that tsllm-run refused at load ("invalid engine header") or read wrongly.
  const logits = graph.values.get(graph.outputs.logits)!;
  if (
    !ENGINE_DTYPES.map(valueDtypeOf).includes(logits.dtype as ReturnType<typeof valueDtypeOf>) ||
    logits.shape.length !== 2 ||
    logits.shape[1] !== facts.vocabSize
  )
    throw new BuildError(
      `${o.modelFile}: forward()'s "logits" output is ${logits.dtype}${shapeStr(logits.shape)}; expected float logits [rows, ${facts.vocabSize}] (the config's vocab size)`,
    );
  if (graph.meta.numLayers < 1)
    throw new BuildError(
      `${o.modelFile}: forward() calls m.attention() nowhere; an engine needs at least one attention layer (its KV cache)`,
    );

  // The engine's "model" record (docs/engine-format.md): the normalised config under the architecture it was
  // built as. Only llama.ts and gptj.ts keep `architecture` in their configs; qwen2 / mixtral engines had none,
  // and tsllm-inspect named them "model" (onnx.json: "").
  const modelRecord = { architecture: archName, ...cfg } as Record<string, unknown>;
  const ckpt: Checkpoint | null = once ? once.get() : null;
  if (ckpt) bindCheckpointWeights(graph, ckpt);
  if (o.printIr) o.log?.(`--- IR before any pass ---\n${printGraph(graph)}`);
  const pipeline = runPipeline(graph, build, {
    disable: o.disablePasses ?? [],
    dumpAfter: o.dumpIrAfter ?? [],
    log: o.log,
  });
  build.passes = pipeline.applied;
  logQuantReport(pipeline.ranks[0]?.meta.quant, o.log);
  const rank0 = pipeline.ranks[0];
  if (o.emit !== "onnx" && rank0)
    for (const w of gpuWarnings(rank0, build))
      o.log?.(`warning: this engine will not run on the GPU (tsllm-run --device cpu runs it): ${w}`);
  if (o.emit === "onnx") return await emitOnnx(o, inputs, pipeline, build, modelRecord, facts, ckpt);
  const ranks: RankProgram[] = pipeline.ranks.map((g, rank) => ({ rank, graph: g }));
  const config = await writeEngine({
    outDir: o.out,
    force: o.force,
    inputs,
    ranks,
    build,
    model: modelRecord,
    facts,
    checkpoint: ckpt,
    extraFiles: { ...pipeline.extraFiles, ...tokenizer?.files },
    tokenizer: tokenizer ? { files: tokenizer.names } : undefined,
    onProgress: o.onProgress,
  });
  return { config, pipeline };
}

/** Says which layers were quantised and which stay in higher precision, and why. */
function logQuantReport(r: QuantReport | undefined, log?: (line: string) => void): void {
  if (!r || !log) return;
  log(`quantisation ${r.scheme}: ${r.quantized.length} linears quantised per rank`);
  for (const k of r.kept) log(`  kept in higher precision: ${k.name} — ${k.reason}`);
}

async function emitOnnx(
  o: CompileOptions,
  inputs: string[],
  pipeline: PipelineResult,
  build: EngineConfig["build"],
  model: Record<string, unknown>,
  facts: EngineConfig["facts"],
  checkpoint: Checkpoint | null,
): Promise<CompileResult> {
  const onnx = await writeOnnx({
    outDir: o.out,
    force: o.force,
    inputs,
    ranks: pipeline.ranks,
    build,
    model,
    facts,
    checkpoint,
  });
  const ranks = onnx.ranks.map((r) => ({ file: r.file, bytes: r.bytes + r.data_bytes, sha256: "" }));
  return { config: { format_version: 0, model, facts, build, ranks }, pipeline, onnx };
}
