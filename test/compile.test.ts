// compileEngine (src/compile.ts), in-process: every refusal is one exact line thrown before anything is
// written (no output folder, no temporary sibling), the limits it works out when none are given (by hand
// from the fixture's config.json), the dtype it picks, the eos ids it takes, and what the engine's
// config.json records, read back with the engine reader. Each build happens inside its test (not in a
// beforeAll), so that mutation testing's per-test coverage sees it.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { BuildError, type CompileOptions, compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { GPTJ_MODEL, LLAMA_MODEL, snapshot, TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";

type Opts = Partial<CompileOptions>;

/** tiny-llama's config.json (bf16, max_position_embeddings 256, eos 2, vocab 512). */
const llamaJson = () => JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));

/** A folder with `config.json` holding `json`; returns the file. */
function configFile(json: unknown, dir = tmpDir("tsllm-compile-")): string {
  const file = path.join(dir, "config.json");
  fs.writeFileSync(file, typeof json === "string" ? json : JSON.stringify(json));
  return file;
}

/**
 * tiny-llama as a checkpoint folder with its config.json and weights (linked) and, unless `gen` is
 * undefined, a generation_config.json of that text; no tokenizer files.
 */
function llamaCheckpoint(gen: string | undefined): string {
  const dir = path.join(tmpDir("tsllm-compile-"), "ck");
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(TINY_LLAMA, "config.json"), path.join(dir, "config.json"));
  fs.symlinkSync(path.join(TINY_LLAMA, "model.safetensors"), path.join(dir, "model.safetensors"));
  if (gen !== undefined) fs.writeFileSync(path.join(dir, "generation_config.json"), gen);
  return dir;
}

/** Builds tiny-llama's model file into a fresh folder; the engine as read back, and the log lines. */
async function built(o: Opts) {
  const box = tmpDir("tsllm-compile-");
  const out = path.join(box, "engine");
  const log: string[] = [];
  const result = await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, out, log: (l) => log.push(l), ...o });
  const engine = openEngine(out);
  return {
    out,
    box,
    log,
    result,
    config: engine.config,
    header: engine.ranks[0].header,
    ranks: engine.ranks,
  };
}

/**
 * Expects the build to be refused with exactly `want` (one line), `name` the error's class, and the folder
 * `around` (holding the output, `around/engine` unless `o.out` says) as it was: no engine, no temporary
 * sibling. Returns the log lines.
 */
async function refused(
  o: Opts,
  want: string,
  name = "BuildError",
  around = tmpDir("tsllm-compile-"),
): Promise<string[]> {
  const out = o.out ?? path.join(around, "engine");
  const before = snapshot(around);
  const log: string[] = [];
  const err = await compileEngine({
    modelFile: LLAMA_MODEL,
    sm: 90,
    log: (l) => log.push(l),
    ...o,
    out,
  }).then(
    () => new Error("built"),
    (e: Error) => e,
  );
  expect(err.message).toBe(want);
  expect(err.message).not.toContain("\n");
  expect(err.name).toBe(name);
  expect(snapshot(around)).toEqual(before);
  return log;
}

const openFds = () => fs.readdirSync("/proc/self/fd").length;

describe("compile refuses before writing anything", () => {
  it("--emit other than engine or onnx (a BuildError), before looking at the output folder", async () => {
    const box = tmpDir("tsllm-compile-");
    fs.writeFileSync(path.join(box, "notes.txt"), "mine");
    await refused({ emit: "tar" as never }, "--emit tar: expected engine or onnx");
    // A foreign folder would be refused too, but the flag is checked first.
    await refused(
      { emit: "zip" as never, out: box },
      "--emit zip: expected engine or onnx",
      "BuildError",
      box,
    );
    const err = await compileEngine({
      modelFile: LLAMA_MODEL,
      sm: 90,
      out: path.join(box, "e"),
      emit: "x" as never,
    }).catch((e) => e);
    expect(err).toBeInstanceOf(BuildError);
  });

  it("checks the output folder before loading the model file (a missing model file is not reached)", async () => {
    const box = tmpDir("tsllm-compile-");
    fs.writeFileSync(path.join(box, "notes.txt"), "mine");
    await refused(
      { modelFile: path.join(tmpDir("tsllm-compile-"), "no-such-model.ts"), out: box },
      `-o ${box}: is a folder with files in it that is not a tsllm engine or ONNX export; not replacing it (choose another path, or --force)`,
      "OutputDirError",
      box,
    );
  });

  it("refuses an output folder holding the build's model file, config or tokenizer, even with --force", async () => {
    const box = tmpDir("tsllm-compile-");
    const out = path.join(box, "out");
    fs.mkdirSync(out);
    const config = configFile(llamaJson(), out);
    await refused(
      { config, out, force: true },
      `-o ${out}: contains ${config}, an input of this build; choose another folder`,
      "OutputDirError",
      box,
    );
    const tok = path.join(out, "tok");
    fs.mkdirSync(tok);
    fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(tok, "tokenizer.json"));
    await refused(
      { tokenizer: tok, out, force: true },
      `-o ${out}: contains ${tok}, an input of this build; choose another folder`,
      "OutputDirError",
      box,
    );
    const modelFile = path.join(out, "llama.ts");
    fs.copyFileSync(LLAMA_MODEL, modelFile);
    await refused(
      { modelFile, out, force: true },
      `-o ${out}: contains ${modelFile}, an input of this build; choose another folder`,
      "OutputDirError",
      box,
    );
  });

  it("--checkpoint and --config together", async () => {
    await refused(
      { checkpoint: TINY_LLAMA, config: path.join(TINY_LLAMA, "config.json") },
      "give either --checkpoint or --config, not both",
    );
  });

  it("--random-weights with a checkpoint", async () => {
    await refused(
      { checkpoint: TINY_LLAMA, randomWeights: true },
      "--random-weights builds from --config, not a checkpoint",
    );
  });

  it("a config.json that is missing or not JSON, naming the file", async () => {
    const dir = tmpDir("tsllm-compile-");
    await refused(
      { config: path.join(dir, "nope.json") },
      `${path.join(dir, "nope.json")}: file not found`,
      "ConfigError",
    );
    const empty = path.join(dir, "ck");
    fs.mkdirSync(empty);
    await refused({ checkpoint: empty }, `${path.join(empty, "config.json")}: file not found`, "ConfigError");
    // JSON.parse quotes the text, newlines and all: the message stays one line, runs of spaces as one.
    const bad = configFile('{"a":\n\n   x}');
    await refused(
      { config: bad },
      `${bad}: invalid JSON: Unexpected token 'x', "{"a": x}" is not valid JSON`,
      "ConfigError",
    );
    // A byte order mark is invisible: JSON.parse's "Unexpected token ' '" did not say what to remove.
    const bom = configFile(`\ufeff${JSON.stringify(llamaJson())}`);
    await refused(
      { config: bom },
      `${bom}: starts with a UTF-8 byte order mark, which JSON does not allow: save it without one`,
      "ConfigError",
    );
  });

  it("an architecture the model file does not implement, naming the bundled file that does", async () => {
    const gptj = configFile({ ...llamaJson(), architectures: ["GPTJForCausalLM"] });
    const supported = "(supported: LlamaForCausalLM, MistralForCausalLM)";
    await refused(
      { config: gptj },
      `${gptj}: unsupported architecture "GPTJForCausalLM" for ${LLAMA_MODEL} ${supported}; models/gptj.ts implements it`,
      "ConfigError",
    );
    await refused(
      { checkpoint: TINY_GPTJ },
      `${path.join(TINY_GPTJ, "config.json")}: unsupported architecture "GPTJForCausalLM" for ${LLAMA_MODEL} ${supported}; models/gptj.ts implements it`,
      "ConfigError",
    );
    const foo = configFile({ ...llamaJson(), architectures: ["FooForCausalLM"] });
    await refused(
      { config: foo },
      `${foo}: unsupported architecture "FooForCausalLM" for ${LLAMA_MODEL} ${supported}`,
      "ConfigError",
    );
    const { architectures: _, ...noArch } = llamaJson();
    const none = configFile(noArch);
    await refused(
      { config: none },
      `${none}: unsupported architecture (none given) for ${LLAMA_MODEL} ${supported}`,
      "ConfigError",
    );
    const notList = configFile({ ...llamaJson(), architectures: "LlamaForCausalLM" });
    await refused(
      { config: notList },
      `${notList}: unsupported architecture (none given) for ${LLAMA_MODEL} ${supported}`,
      "ConfigError",
    );
  });

  it("a model file whose default config names another architecture: the source is the model file's default", async () => {
    const dir = tmpDir("tsllm-compile-");
    const modelFile = path.join(dir, "other.ts");
    fs.writeFileSync(
      modelFile,
      `import llama from ${JSON.stringify(LLAMA_MODEL)};\nexport default { ...llama, defaultConfig: { ...llama.defaultConfig, architectures: ["GPTJForCausalLM"] } };\n`,
    );
    await refused(
      { modelFile },
      `${modelFile} (default config): unsupported architecture "GPTJForCausalLM" for ${modelFile} (supported: LlamaForCausalLM, MistralForCausalLM); models/gptj.ts implements it`,
      "ConfigError",
    );
  });

  it.each<[Opts, string]>([
    [
      { sm: 75 },
      "--sm 75: the tsllm CUDA runtime needs sm 80 or newer (Ampere and later); such an engine could never load",
    ],
    [{ sm: 85 }, "--sm 85: not a known GPU architecture (known: 80, 86, 87, 89, 90, 100, 120)"],
    [{ tp: 3 }, "--tp 3: --tp must be 1, 2, 4 or 8"],
    [{ dtype: "fp64" }, '--dtype fp64: Invalid option: expected one of "fp32"|"fp16"|"bf16"'],
    [{ tokensPerBlock: 48 }, "--tokens-per-block 48: --tokens-per-block must be a power of two"],
    [{ maxBatchSize: 0 }, "--max-batch-size: Too small: expected number to be >0"],
    [{ maxSeqLen: 0 }, "--max-seq-len: Too small: expected number to be >0"],
    [{ maxNumTokens: 1.5 }, "--max-num-tokens: Invalid input: expected int, received number"],
    [{ moeEpSize: 0 }, "--moe-ep-size: Too small: expected number to be >0"],
    [{ quant: "int3" }, '--quant: Invalid option: expected one of "none"|"fp8"|"int8-wo"|"int4-wo"'],
    [
      { kvCacheDtype: "fp64" },
      '--kv-cache-dtype: Invalid option: expected one of "fp32"|"fp16"|"bf16"|"fp8"',
    ],
    [{ groupSize: 0 }, "--group-size: Too small: expected number to be >0"],
    [{ seed: -1 }, "--seed: Too small: expected number to be >=0"],
    [
      { tp: 2, moeEpSize: 4 },
      "--moe-ep-size 4: must divide --tp 2 (the tp ranks form moe-ep-size expert groups)",
    ],
    [
      { tp: 4, moeEpSize: 3 },
      "--moe-ep-size 3: must divide --tp 4 (the tp ranks form moe-ep-size expert groups)",
    ],
    // Said "export with --quant none" to a build that had no --quant.
    [
      { emit: "onnx", dtype: "fp32", kvCacheDtype: "fp8" },
      "--emit onnx: --kv-cache-dtype fp8 is not exported yet (past / present hold the --dtype fp32 activations); export without --kv-cache-dtype",
    ],
    // Was exported with fp32 past / present, the bf16 cache recorded nowhere and applied nowhere.
    [
      { emit: "onnx", dtype: "fp32", kvCacheDtype: "bf16" },
      "--emit onnx: --kv-cache-dtype bf16 is not exported yet (past / present hold the --dtype fp32 activations); export without --kv-cache-dtype",
    ],
    [
      { emit: "onnx", quant: "fp8" },
      "--emit onnx: quantised builds (--quant fp8) are not exported yet; export with --quant none",
    ],
    // Was recorded in the engine's config and never used (int8-wo and fp8 scale each output channel).
    [
      { quant: "int8-wo", groupSize: 64 },
      "--group-size 64 goes with --quant int4-wo (--quant int8-wo scales each output channel); it would be recorded and unused",
    ],
    [
      { groupSize: 32 },
      "--group-size 32 goes with --quant int4-wo (no --quant given); it would be recorded and unused",
    ],
  ])("%o", async (o, want) => {
    expect(await refused(o, want)).toEqual([]); // refused before the tokenizer (its log line) or the graph
  });

  it("a --moe-ep-size that divides --tp passes compile's check; the pipeline refuses a model without experts", async () => {
    await refused(
      { tp: 4, moeEpSize: 2 },
      "--moe-ep-size 2: the model has no mixture-of-experts layers to divide",
      "ShardError",
    );
  });

  it("--max-seq-len past a sliding window (the window itself builds)", async () => {
    const cfg = configFile({ ...llamaJson(), architectures: ["MistralForCausalLM"], sliding_window: 128 });
    await refused(
      { config: cfg, maxSeqLen: 129 },
      "--max-seq-len 129 exceeds the model's sliding_window 128 (attention beyond the window is not implemented)",
    );
    const { config } = await built({ config: cfg, maxSeqLen: 128 });
    expect(config.build.max_seq_len).toBe(128);
  });

  it("a tokenizer with ids past the model's vocab_size", async () => {
    const cfg = configFile({ ...llamaJson(), vocab_size: 256 });
    await refused(
      { config: cfg, tokenizer: TINY_LLAMA },
      `${TINY_LLAMA}: the tokenizer has token id 511, beyond the model's vocab_size 256`,
      "TokenizerError",
    );
  });

  it("an eos_token_id in generation_config.json that is not a token id or a list of them", async () => {
    for (const [eos, shown] of [
      ['"x"', '"x"'],
      ["[1, -1]", "[1,-1]"],
      ["1.5", "1.5"],
      ["[508, null]", "[508,null]"],
    ]) {
      const ck = llamaCheckpoint(`{"eos_token_id": ${eos}}`);
      await refused(
        { checkpoint: ck },
        `${path.join(ck, "generation_config.json")}: eos_token_id must be a token id or a list of them, got ${shown}`,
        "ConfigError",
      );
    }
    const ck = llamaCheckpoint("{eos");
    await refused(
      { checkpoint: ck },
      `${path.join(ck, "generation_config.json")}: invalid JSON: Expected property name or '}' in JSON at position 1`,
      "ConfigError",
    );
  });

  it("a failed checkpoint build leaves no file open", async () => {
    const fds = openFds();
    await refused(
      { checkpoint: TINY_LLAMA, quant: "int4-wo", groupSize: 48 },
      "--group-size 48: does not divide the input dim 128 of model.layers.0.self_attn.qkv_proj.weight",
      "QuantError",
    );
    expect(openFds()).toBe(fds);
  });
});

describe("model files that fail", () => {
  /** A model file in its own folder: tiny-llama's, with `parseConfig` / `forward` replaced. */
  function modelFile(body: string): string {
    const file = path.join(tmpDir("tsllm-compile-"), "broken.ts");
    fs.writeFileSync(
      file,
      `import llama from ${JSON.stringify(LLAMA_MODEL)};\nexport default {\n  ...llama,\n${body}};\n`,
    );
    return file;
  }

  it("parseConfig() throwing: a BuildError naming the model file and its line", async () => {
    const file = modelFile('  parseConfig() {\n    throw new RangeError("no way");\n  },\n');
    await refused({ modelFile: file }, `${file}: parseConfig(): no way (at ${file}:5:11)`);
  });

  it("parseConfig()'s ConfigError passes through as it is", async () => {
    const cfg = configFile({ ...llamaJson(), rms_norm_eps: -1 });
    const err = await compileEngine({
      modelFile: LLAMA_MODEL,
      config: cfg,
      sm: 90,
      out: path.join(tmpDir(), "e"),
    }).catch((e) => e);
    expect(err.name).toBe("ConfigError");
    expect(err.message.startsWith(`${cfg}: `)).toBe(true);
    expect(err.message).toContain("rms_norm_eps");
    expect(err.message).not.toContain("parseConfig()");
  });

  it('a parseConfig() that passes config.json\'s "sliding_window": null through has no window', async () => {
    // Qwen2-style configs say "sliding_window": null; BaseConfig.slidingWindow is optional, and a JavaScript
    // model file may hand that null on as it is.
    const file = modelFile(
      "  parseConfig(json, source) {\n    return { ...llama.parseConfig(json, source), slidingWindow: json.sliding_window };\n  },\n",
    );
    const config = configFile({ ...llamaJson(), sliding_window: null });
    expect((await built({ modelFile: file, config })).config.build.max_seq_len).toBe(256);
    const { config: engine, header } = await built({ modelFile: file, config, maxSeqLen: 100 });
    expect(engine.build.max_seq_len).toBe(100);
    expect(header.limits.max_seq_len).toBe(100);
    // A window that is there still caps it.
    const windowed = configFile({ ...llamaJson(), sliding_window: 64 });
    await refused(
      { modelFile: file, config: windowed, maxSeqLen: 65 },
      "--max-seq-len 65 exceeds the model's sliding_window 64 (attention beyond the window is not implemented)",
    );
  });

  it("forward() throwing, and forward() without a logits output", async () => {
    const file = modelFile('  forward() {\n    throw new TypeError("bad graph");\n  },\n');
    await refused({ modelFile: file }, `${file}: forward(): bad graph (at ${file}:5:11)`);
    const quiet = modelFile("  forward() {},\n");
    await refused({ modelFile: quiet }, `${quiet}: forward() must call m.output("logits", …)`);
  });
});

describe("what the engine records", () => {
  it("tiny-llama with nothing but --sm: limits and dtype from its config.json, eos from generation_config.json", async () => {
    const { config, header, result, log, out, ranks } = await built({ checkpoint: TINY_LLAMA });
    // config.json: dtype bfloat16 → bf16 (and the KV cache too); max_position_embeddings 256 (under the 8192
    // cap, no sliding window) → max_seq_len 256; the rest are compile's defaults.
    const { passes, ...build } = config.build;
    expect(build).toEqual({
      sm: 90,
      tp: 1,
      moe_ep_size: 1,
      dtype: "bf16",
      kv_cache_dtype: "bf16",
      quant: "none",
      group_size: 128,
      max_batch_size: 256,
      max_seq_len: 256,
      max_num_tokens: 8192,
      tokens_per_block: 32,
      random_weights: false,
      seed: 0,
    });
    expect(passes).toEqual(result.pipeline.applied);
    expect(passes).toEqual(expect.arrayContaining(["qkv-fusion", "cse", "dce", "memory-plan"]));
    expect(header.limits).toEqual({ max_batch_size: 256, max_seq_len: 256, max_num_tokens: 8192 });
    expect(header.kv_cache.tokens_per_block).toBe(32);
    expect(header.dtype).toBe("bf16");
    expect(ranks).toHaveLength(1);
    // config.json says eos 2; generation_config.json [508, 511], which transformers' generate uses.
    expect(config.facts).toEqual({
      vocabSize: 512,
      numLayers: 2,
      numHeads: 4,
      numKvHeads: 2,
      headDim: 32,
      hiddenSize: 128,
      maxPositionEmbeddings: 256,
      eosTokenIds: [508, 511],
    });
    expect(config.model.vocabSize).toBe(512);
    // Weights from the checkpoint, none random.
    expect(header.weights.length).toBeGreaterThan(0);
    for (const w of header.weights) expect(w.random).toBeNull();
    expect(header.weights.some((w) => w.nbytes > 0)).toBe(true);
    // The checkpoint's tokenizer, recorded and copied; no note, no warning (a bf16 engine runs on the GPU).
    expect(config.tokenizer?.files).toEqual([
      "tokenizer.json",
      "tokenizer_config.json",
      "generation_config.json",
      "chat_template.jinja",
    ]);
    for (const f of config.tokenizer!.files)
      expect(fs.readFileSync(path.join(out, f))).toEqual(fs.readFileSync(path.join(TINY_LLAMA, f)));
    expect(log.filter((l) => /^(note|warning)/.test(l))).toEqual([]);
    expect(result.config).toEqual(config);
    expect(result.onnx).toBeUndefined();
  });

  it("tiny-gptj: float16 → fp16, n_positions 256 → max_seq_len 256, no tokenizer", async () => {
    const { config, header, out, log } = await built({ modelFile: GPTJ_MODEL, checkpoint: TINY_GPTJ });
    expect(config.build.dtype).toBe("fp16");
    expect(config.build.kv_cache_dtype).toBe("fp16");
    expect(header.limits).toEqual({ max_batch_size: 256, max_seq_len: 256, max_num_tokens: 8192 });
    expect(config.facts.eosTokenIds).toEqual([50256]);
    expect(config.tokenizer).toBeUndefined();
    expect(fs.readdirSync(out).sort()).toEqual(["config.json", "rank0.engine", "report.html", "report.json"]);
    expect(log).toContain("no tokenizer: the engine takes token ids only (--tokenizer DIR adds one)");
  });

  it("--dtype auto: bfloat16 → bf16; float16, float32 or no dtype → fp16; torch_dtype read as well", async () => {
    const base = llamaJson();
    delete base.dtype;
    const cases: [Record<string, unknown>, string | undefined, string][] = [
      [{ dtype: "bfloat16" }, "auto", "bf16"],
      [{ torch_dtype: "bfloat16" }, undefined, "bf16"],
      [{ dtype: "float16" }, "auto", "fp16"],
      [{ dtype: "float32" }, undefined, "fp16"],
      [{ dtype: "float32" }, "auto", "fp16"],
      [{}, undefined, "fp16"],
      [{ dtype: "bfloat16" }, "fp32", "fp32"],
    ];
    for (const [extra, dtype, want] of cases) {
      const { config } = await built({ config: configFile({ ...base, ...extra }), dtype });
      expect([extra, dtype, config.build.dtype, config.build.kv_cache_dtype]).toEqual([
        extra,
        dtype,
        want,
        want,
      ]);
    }
  });

  it("max_seq_len defaults to the smallest of max_position_embeddings, the sliding window and 8192", async () => {
    const cases: [Record<string, unknown>, number][] = [
      [{ max_position_embeddings: 131072 }, 8192],
      [{ max_position_embeddings: 8193 }, 8192],
      [{ max_position_embeddings: 1000 }, 1000],
      [{ architectures: ["MistralForCausalLM"], max_position_embeddings: 4096, sliding_window: 300 }, 300],
      [{ architectures: ["MistralForCausalLM"], max_position_embeddings: 200, sliding_window: 300 }, 200],
      [
        { architectures: ["MistralForCausalLM"], max_position_embeddings: 32768, sliding_window: 10000 },
        8192,
      ],
      [{ sliding_window: null }, 256],
    ];
    for (const [extra, want] of cases) {
      const { config, header, log } = await built({ config: configFile({ ...llamaJson(), ...extra }) });
      expect([extra, config.build.max_seq_len, header.limits.max_seq_len]).toEqual([extra, want, want]);
      expect(log.filter((l) => l.startsWith("note:"))).toEqual([]);
    }
  });

  it("the options given are what it records (two ranks, fp32 with an fp16 KV cache, int8 weights)", async () => {
    const { config, header, ranks, log } = await built({
      tp: 2,
      dtype: "fp32",
      kvCacheDtype: "fp16",
      quant: "int8-wo",
      maxBatchSize: 3,
      maxSeqLen: 100,
      maxNumTokens: 50,
      tokensPerBlock: 16,
      seed: 7,
      sm: 89,
    });
    const { passes: _, ...build } = config.build;
    expect(build).toEqual({
      sm: 89,
      tp: 2,
      moe_ep_size: 1,
      dtype: "fp32",
      kv_cache_dtype: "fp16",
      quant: "int8-wo",
      group_size: 128, // the default, recorded (read only by int4-wo)
      max_batch_size: 3,
      max_seq_len: 100,
      max_num_tokens: 50,
      tokens_per_block: 16,
      random_weights: true,
      seed: 7,
    });
    expect(ranks).toHaveLength(2);
    expect(header.limits).toEqual({ max_batch_size: 3, max_seq_len: 100, max_num_tokens: 50 });
    expect(header.kv_cache.tokens_per_block).toBe(16);
    expect(header.kv_cache.dtype).toBe("fp16");
    // llama.ts's default config: no eos anywhere.
    expect(config.facts.eosTokenIds).toEqual([]);
    // Random weights: the embedding uniform with std 0.02 (initializer_range's default), ±0.02·√3.
    const embed = header.values.find((v) => v.name === "model.embed_tokens.weight")!;
    const random = header.weights.find((w) => w.value === embed.id)!.random!;
    expect(random.mean).toBe(0);
    expect(random.scale).toBeCloseTo(0.02 * Math.sqrt(3), 12);
    // 2 layers × (qkv, o, gate-up, down) = 8 linears; the embedding and lm_head are kept.
    expect(log.filter((l) => /^ *(quantisation|kept)/.test(l))).toEqual([
      "quantisation int8-wo: 8 linears quantised per rank",
      "  kept in higher precision: model.embed_tokens.weight — embedding: a row gather, not a GEMM, nothing to gain from quantising",
      "  kept in higher precision: lm_head.weight — lm_head: logits feed sampling directly; kept in the engine dtype as TensorRT-LLM does",
    ]);
    const warn = "warning: this engine will not run on the GPU (tsllm-run --device cpu runs it): ";
    expect(log.filter((l) => l.startsWith("warning"))).toEqual([
      `${warn}dtype fp32: the CUDA runtime runs fp16 and bf16 engines`,
      `${warn}kv-cache-dtype fp16: the CUDA runtime's KV cache holds the activation dtype or fp8`,
    ]);
  });

  it("a note, not a refusal, past max_position_embeddings (256 itself: no note)", async () => {
    const past = await built({ maxSeqLen: 257 });
    expect(past.config.build.max_seq_len).toBe(257);
    expect(past.log.filter((l) => l.startsWith("note:"))).toEqual([
      "note: --max-seq-len 257 exceeds the model's max_position_embeddings 256",
    ]);
    const at = await built({ maxSeqLen: 256 });
    expect(at.log.filter((l) => l.startsWith("note:"))).toEqual([]);
    expect(at.log.some((l) => l.startsWith("quantisation"))).toBe(false);
    // Without a log function the note is skipped, not an error.
    const out = path.join(tmpDir("tsllm-compile-"), "engine");
    await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, out, maxSeqLen: 300 });
    expect(openEngine(out).config.build.max_seq_len).toBe(300);
  });

  it("a config.json without a dtype is read as float16: llama's inv_freq rounded as with float16, not float32", async () => {
    const { dtype: _, ...base } = llamaJson();
    const rank = async (extra: Record<string, unknown>) =>
      fs.readFileSync(
        path.join(
          (await built({ config: configFile({ ...base, ...extra }), dtype: "fp32" })).out,
          "rank0.engine",
        ),
      );
    const none = await rank({});
    expect(none.equals(await rank({ dtype: "float16" }))).toBe(true);
    expect(none.equals(await rank({ dtype: "float32" }))).toBe(false);
  });

  it("eos ids: generation_config.json's (one id, a list, 0) over config.json's 2; config.json's when it has none", async () => {
    const cases: [string | undefined, number[]][] = [
      ['{"eos_token_id": 0}', [0]],
      ['{"eos_token_id": 7}', [7]],
      ['{"eos_token_id": [3, 4]}', [3, 4]],
      ['{"eos_token_id": null}', [2]],
      ['{"eos_token_id": []}', [2]],
      ['{"bos_token_id": 1}', [2]],
      [undefined, [2]],
    ];
    for (const [gen, want] of cases) {
      const { config } = await built({ checkpoint: llamaCheckpoint(gen) });
      expect([gen, config.facts.eosTokenIds]).toEqual([gen, want]);
    }
    // With --config, the folder's generation_config.json is not read.
    const ck = llamaCheckpoint('{"eos_token_id": 9}');
    const { config } = await built({ config: path.join(ck, "config.json") });
    expect(config.facts.eosTokenIds).toEqual([2]);
    expect(config.build.random_weights).toBe(true);
  });

  it("--tokenizer DIR with a config build: copied and recorded", async () => {
    const { config, out, log } = await built({
      config: path.join(TINY_LLAMA, "config.json"),
      tokenizer: TINY_LLAMA,
    });
    expect(config.tokenizer?.files).toContain("tokenizer.json");
    expect(fs.readFileSync(path.join(out, "tokenizer.json"))).toEqual(
      fs.readFileSync(path.join(TINY_LLAMA, "tokenizer.json")),
    );
    expect(log.some((l) => l.startsWith("tokenizer: tokenizer.json"))).toBe(true);
  });

  it("--disable-passes leaves those passes out of the record", async () => {
    const all = (await built({})).config.build.passes;
    const { config } = await built({ disablePasses: ["cse", "qkv-fusion"] });
    expect(config.build.passes).toEqual(all.filter((p) => p !== "cse" && p !== "qkv-fusion"));
    expect(all.length).toBe(config.build.passes.length + 2);
  });

  it("--emit engine is the default", async () => {
    const { config, out } = await built({ emit: "engine" });
    expect(config.ranks[0].file).toBe("rank0.engine");
    expect(fs.existsSync(path.join(out, "rank0.engine"))).toBe(true);
  });

  it("--emit onnx: ranks as ONNX files with their data, no GPU warning, --force replaces a foreign folder", async () => {
    const box = tmpDir("tsllm-compile-");
    fs.writeFileSync(path.join(box, "notes.txt"), "mine");
    const log: string[] = [];
    const r = await compileEngine({
      modelFile: LLAMA_MODEL,
      sm: 90,
      dtype: "fp32",
      emit: "onnx",
      out: box,
      force: true,
      log: (l) => log.push(l),
    });
    expect(fs.readdirSync(box).sort()).toEqual(["onnx.json", "rank0.onnx", "rank0.onnx.data"]);
    const size = (f: string) => fs.statSync(path.join(box, f)).size;
    expect(r.config.format_version).toBe(0);
    expect(r.config.ranks).toEqual([
      { file: "rank0.onnx", bytes: size("rank0.onnx") + size("rank0.onnx.data"), sha256: "" },
    ]);
    expect(r.config.build.dtype).toBe("fp32");
    expect(r.config.build.random_weights).toBe(true);
    expect(r.config.facts.vocabSize).toBe(512);
    expect(r.config.model.vocabSize).toBe(512);
    expect(r.onnx?.ranks.map((x) => x.file)).toEqual(["rank0.onnx"]);
    expect(log.filter((l) => l.startsWith("warning"))).toEqual([]);
  });
});
