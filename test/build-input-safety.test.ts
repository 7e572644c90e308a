// Bad input on the build side that earlier tests did not reach (a bug hunt's findings): each case is refused
// with one line naming the file, tensor or field, before anything is written, where the old code built a wrong
// engine, one its own reader refused, hung, or named nothing.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openSafetensors, type TensorToWrite, writeSafetensors } from "../src/checkpoint/safetensors.ts";
import { type CompileOptions, compileEngine } from "../src/compile.ts";
import { checkGoldenFits, readGolden } from "../src/golden.ts";
import {
  buildFixture,
  corruptLastWeightByte,
  GPTJ_MODEL,
  LLAMA_MODEL,
  REPO,
  snapshot,
  TINY_GPTJ,
  TINY_LLAMA,
  tmpDir,
} from "./fixtures.ts";

const GOLDEN = path.join(TINY_LLAMA, "golden.safetensors");

/** tiny-llama as a checkpoint folder: config.json edited by `cfg`, weights linked (or written by `weights`). */
function checkpoint(
  o: {
    cfg?: (c: Record<string, unknown>) => void;
    weights?: (t: Record<string, TensorToWrite>) => void;
  } = {},
): string {
  const dir = path.join(tmpDir("tsllm-safety-"), "ck");
  fs.mkdirSync(dir);
  const c = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));
  o.cfg?.(c);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(c));
  const src = path.join(TINY_LLAMA, "model.safetensors");
  if (!o.weights) {
    fs.symlinkSync(src, path.join(dir, "model.safetensors"));
    return dir;
  }
  const st = openSafetensors(src);
  const t: Record<string, TensorToWrite> = {};
  for (const n of st.names()) t[n] = { ...st.info(n), data: st.read(n) };
  st.close();
  o.weights(t);
  writeSafetensors(path.join(dir, "model.safetensors"), t);
  return dir;
}

/** Builds with `o` and expects exactly `want`; the output's folder is left as it was and no weight was written. */
async function refused(o: Partial<CompileOptions>, want: string, name: string): Promise<void> {
  const around = tmpDir("tsllm-safety-");
  const before = snapshot(around);
  let progressed = false;
  const err = await compileEngine({
    modelFile: LLAMA_MODEL,
    sm: 90,
    out: path.join(around, "engine"),
    onProgress: () => {
      progressed = true;
    },
    ...o,
  }).then(
    () => new Error("built"),
    (e: Error) => e,
  );
  expect(err.message).toBe(want);
  expect(err.name).toBe(name);
  expect(progressed).toBe(false);
  expect(snapshot(around)).toEqual(before);
}

describe("checkpoints that would build a wrong engine", () => {
  it("a pre-quantised checkpoint (config.json quantization_config) is refused: its scales would be ignored", async () => {
    // Llama 3.1 405B FP8 (fbgemm_fp8) stores each linear as F8_E4M3 values plus a weight_scale tensor of the same
    // name; the values have the shapes the model expects, so the build read them as they are and ignored the
    // scales (tiny-llama so converted built without a word, max |Δlogit| 4.2 against its goldens). The refusal
    // depends on the config alone: the linked bf16 weights stand in.
    for (const [q, shown] of [
      [{ quant_method: "fbgemm_fp8", activation_scale_ub: 1200 }, ' (quant_method "fbgemm_fp8")'],
      [{ quant_method: "gptq", bits: 4 }, ' (quant_method "gptq")'],
      [{ bits: 4 }, ""],
    ] as const) {
      const ck = checkpoint({ cfg: (c) => Object.assign(c, { quantization_config: q }) });
      await refused(
        { checkpoint: ck },
        `${path.join(ck, "config.json")}: "quantization_config"${shown}: pre-quantised checkpoints are not supported; build from the unquantised checkpoint (--quant fp8, int8-wo or int4-wo quantise it)`,
        "ConfigError",
      );
    }
    // null is no quantisation (as transformers reads it); a --config build has random weights, no scales to miss.
    const ck = checkpoint({ cfg: (c) => Object.assign(c, { quantization_config: null }) });
    const out = path.join(tmpDir("tsllm-safety-"), "engine");
    await expect(
      compileEngine({ modelFile: LLAMA_MODEL, sm: 90, checkpoint: ck, out }),
    ).resolves.toBeDefined();
    const cfg = path.join(tmpDir("tsllm-safety-"), "config.json");
    fs.writeFileSync(
      cfg,
      JSON.stringify({
        ...JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8")),
        quantization_config: { quant_method: "fp8" },
      }),
    );
    await expect(
      compileEngine({
        modelFile: LLAMA_MODEL,
        sm: 90,
        config: cfg,
        out: path.join(tmpDir("tsllm-safety-"), "e"),
      }),
    ).resolves.toBeDefined();
  });

  it("a weight of a dtype that is not read (F64, integer, BOOL) is refused before any weight is written, named as such", async () => {
    // The old refusal came from the writer, when it reached the tensor, and called F64 "not a float dtype".
    for (const [dtype, size] of [
      ["F64", 8],
      ["I32", 4],
      ["BOOL", 1],
    ] as const) {
      const ck = checkpoint({
        weights: (t) => {
          t["model.norm.weight"] = { dtype, shape: [128], data: new Uint8Array(128 * size) };
        },
      });
      await refused(
        { checkpoint: ck },
        `${path.join(ck, "model.safetensors")}: tensor "model.norm.weight": dtype ${dtype} cannot be a weight (weights are read from F32, F16, BF16, F8_E4M3, F8_E5M2)`,
        "CheckpointError",
      );
    }
  });
});

describe("flags that contradict each other", () => {
  it("--disable-pass of the pass that does --quant or --kv-cache-dtype fp8 is refused (the engine said int8-wo / fp8 over full-precision weights and KV)", async () => {
    await refused(
      { checkpoint: TINY_LLAMA, quant: "int8-wo", disablePasses: ["cse", "quantize-weights"] },
      "--disable-pass quantize-weights: that pass is what --quant int8-wo does; leave it on, or build without --quant int8-wo",
      "BuildError",
    );
    await refused(
      { checkpoint: TINY_LLAMA, kvCacheDtype: "fp8", disablePasses: ["quantize-kv"] },
      "--disable-pass quantize-kv: that pass is what --kv-cache-dtype fp8 does; leave it on, or build without --kv-cache-dtype fp8",
      "BuildError",
    );
    // Without --quant / fp8 KV the passes have nothing to do: disabling them is allowed, as any other pass.
    const out = path.join(tmpDir("tsllm-safety-"), "engine");
    const r = await compileEngine({
      modelFile: LLAMA_MODEL,
      sm: 90,
      checkpoint: TINY_LLAMA,
      disablePasses: ["quantize-weights", "quantize-kv"],
      out,
    });
    expect(r.config.build.passes).not.toContain("quantize-weights");
  });
});

describe("model files whose graph no executor can run", () => {
  function modelFile(forward: string, parse?: string): string {
    const file = path.join(tmpDir("tsllm-safety-"), "m.ts");
    fs.writeFileSync(
      file,
      `import llama from ${JSON.stringify(LLAMA_MODEL)};\nexport default {\n  ...llama,\n${parse ?? ""}  forward(m, cfg) {\n${forward}\n  },\n};\n`,
    );
    return file;
  }

  it("logits that are not float [rows, vocab_size], or no attention at all, are refused (they built an engine tsllm-run refused)", async () => {
    const hidden = modelFile(
      '    const e = m.Embedding("model.embed_tokens", cfg.vocabSize, cfg.hiddenSize);\n    m.output("logits", m.logitRows(e(m.inputIds)));',
    );
    await refused(
      { modelFile: hidden, checkpoint: TINY_LLAMA },
      `${hidden}: forward()'s "logits" output is bf16[num_logits,128]; expected float logits [rows, 512] (the config's vocab size)`,
      "BuildError",
    );
    const ids = modelFile('    m.output("logits", m.inputIds);');
    await refused(
      { modelFile: ids, checkpoint: TINY_LLAMA },
      `${ids}: forward()'s "logits" output is i32[num_tokens]; expected float logits [rows, 512] (the config's vocab size)`,
      "BuildError",
    );
    const noAttention = modelFile(
      '    const e = m.Embedding("model.embed_tokens", cfg.vocabSize, cfg.hiddenSize);\n    const lm = m.Linear("lm_head", cfg.hiddenSize, cfg.vocabSize, {});\n    m.output("logits", lm(m.logitRows(e(m.inputIds))));',
    );
    await refused(
      { modelFile: noAttention, checkpoint: TINY_LLAMA },
      `${noAttention}: forward() calls m.attention() nowhere; an engine needs at least one attention layer (its KV cache)`,
      "BuildError",
    );
  });

  it("an engine header the reader would refuse is refused before writing (a vocab of 2^40 built one tsllm-run could not load)", async () => {
    const cfg = path.join(tmpDir("tsllm-safety-"), "config.json");
    const json = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));
    fs.writeFileSync(cfg, JSON.stringify({ ...json, vocab_size: 2 ** 40 }));
    await refused(
      { config: cfg },
      'rank 0: the engine header would be refused at load, at "arena.bytes": Too big: expected int to be <=9007199254740991',
      "Error",
    );
  });

  it("a parseConfig() that returns nothing names the model file (it was a TypeError naming nothing)", async () => {
    for (const [ret, shown] of [
      ["null", "null"],
      ["undefined", "undefined"],
      ["[]", "an array"],
    ]) {
      const file = modelFile("", `  parseConfig() {\n    return ${ret};\n  },\n`);
      await refused(
        { modelFile: file, checkpoint: TINY_LLAMA },
        `${file}: the model's parseConfig() returned ${shown}, not a config object`,
        "BuildError",
      );
    }
  });
});

describe("inputs that are not files", () => {
  const COMPILE = path.join(REPO, "bin/tsllm-compile.mjs");

  it("a FIFO as config.json, generation_config.json, the shard index or a tokenizer file is refused at once (reading it hung)", () => {
    for (const name of [
      "config.json",
      "generation_config.json",
      "model.safetensors.index.json",
      "tokenizer.json",
    ]) {
      const dir = path.join(tmpDir("tsllm-safety-"), "ck");
      fs.mkdirSync(dir);
      for (const f of fs.readdirSync(TINY_LLAMA))
        if (f !== name) fs.symlinkSync(path.join(TINY_LLAMA, f), path.join(dir, f));
      spawnSync("mkfifo", [path.join(dir, name)]);
      const out = path.join(path.dirname(dir), "engine");
      // A child process with a time limit: the old code blocked in a synchronous read, forever.
      const r = spawnSync(
        process.execPath,
        [COMPILE, LLAMA_MODEL, "--checkpoint", dir, "--sm", "90", "-o", out],
        {
          encoding: "utf8",
          timeout: 20_000,
        },
      );
      expect(r.status, name).toBe(1);
      expect(r.stderr.trim(), name).toBe(
        `error: ${path.join(dir, name)}: is not a regular file (a FIFO, socket or device)`,
      );
      expect(fs.existsSync(out)).toBe(false);
    }
  });

  it("a --config that is a folder says so", async () => {
    const cfg = path.join(tmpDir("tsllm-safety-"), "config.json");
    fs.mkdirSync(cfg);
    await refused({ config: cfg }, `${cfg}: is a directory, not a file`, "ConfigError");
  });

  it("a --checkpoint or --tokenizer that is a file says so (it was \"ENOTDIR: not a directory, stat 'FILE/config.json'\")", async () => {
    const cfg = path.join(TINY_LLAMA, "config.json");
    await refused({ checkpoint: cfg }, `${cfg}: is not a folder`, "ConfigError");
    await refused({ checkpoint: TINY_LLAMA, tokenizer: cfg }, `${cfg}: is not a folder`, "ConfigError");
  });
});

describe("the checkpoint's files where they really are", () => {
  it("-o --force on the folder a Hugging Face cache snapshot links into is refused (it replaced the weights)", async () => {
    // The cache layout: snapshots/<rev>/<file> → ../../blobs/<hash>. The snapshot folder was protected, the blobs
    // folder its links lead to was not: the build read the weights, then --force replaced the folder holding them.
    const hub = path.join(tmpDir("tsllm-safety-"), "models--tiny--llama");
    const blobs = path.join(hub, "blobs");
    const snap = path.join(hub, "snapshots", "rev");
    fs.mkdirSync(blobs, { recursive: true });
    fs.mkdirSync(snap, { recursive: true });
    for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) {
      fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(blobs, `${f}.blob`));
      fs.symlinkSync(`../../blobs/${f}.blob`, path.join(snap, f));
    }
    const before = snapshot(hub);
    for (const emit of ["engine", "onnx"] as const)
      await expect(
        compileEngine({ modelFile: LLAMA_MODEL, sm: 90, checkpoint: snap, out: blobs, force: true, emit }),
      ).rejects.toThrow(
        `-o ${blobs}: contains ${path.join(snap, "config.json")}, an input of this build; choose another folder`,
      );
    expect(snapshot(hub)).toEqual(before);
    // Beside it, the build goes ahead.
    const out = path.join(hub, "engine");
    await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, checkpoint: snap, out });
    expect(fs.existsSync(path.join(out, "rank0.engine"))).toBe(true);
  });

  it("-o --force onto a file of the checkpoint or tokenizer folder is refused (it replaced the weights it had read)", async () => {
    // Only folders holding an input were protected: `-o CHECKPOINT/model.safetensors --force` renamed the weights away
    // and put the engine folder in their place, config.json likewise.
    const ck = path.join(tmpDir("tsllm-safety-"), "ck");
    fs.mkdirSync(ck);
    for (const f of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
      fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(ck, f));
    const tok = path.join(tmpDir("tsllm-safety-"), "tok");
    fs.mkdirSync(tok);
    fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(tok, "tokenizer.json"));
    const before = [snapshot(ck), snapshot(tok)];
    const base = { modelFile: LLAMA_MODEL, sm: 90, checkpoint: ck, force: true };
    for (const f of [path.join(ck, "model.safetensors"), path.join(ck, "config.json")])
      await expect(compileEngine({ ...base, out: f })).rejects.toThrow(
        `-o ${f}: contains ${f}, an input of this build; choose another folder`,
      );
    const t = path.join(tok, "tokenizer.json");
    await expect(compileEngine({ ...base, tokenizer: tok, out: t })).rejects.toThrow(
      `-o ${t}: contains ${t}, an input of this build; choose another folder`,
    );
    expect([snapshot(ck), snapshot(tok)]).toEqual(before);
    // A new folder inside the checkpoint is built, and rebuilt.
    const out = path.join(ck, "engine");
    for (let i = 0; i < 2; i++) await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, checkpoint: ck, out });
    expect(fs.existsSync(path.join(out, "rank0.engine"))).toBe(true);
  });
});

describe("a link whose file is gone (a Hugging Face cache snapshot with a blob not downloaded)", () => {
  it('model.safetensors, or a shard, named as the link it is, with its target (it was "no checkpoint found")', async () => {
    const single = checkpoint();
    fs.rmSync(path.join(single, "model.safetensors"));
    const gone = path.join(path.dirname(single), "blobs", "abc123");
    fs.symlinkSync(gone, path.join(single, "model.safetensors"));
    await refused(
      { checkpoint: single },
      `${path.join(single, "model.safetensors")}: does not exist: it is a link to ${gone}, which does not exist (an incomplete download?)`,
      "CheckpointError",
    );
    const sharded = path.join(tmpDir("tsllm-safety-"), "ck");
    fs.mkdirSync(sharded);
    for (const f of fs.readdirSync(TINY_GPTJ)) fs.symlinkSync(path.join(TINY_GPTJ, f), path.join(sharded, f));
    const index = JSON.parse(fs.readFileSync(path.join(TINY_GPTJ, "model.safetensors.index.json"), "utf8"));
    const [name, shard] = Object.entries(index.weight_map as Record<string, string>)[0];
    fs.rmSync(path.join(sharded, shard));
    fs.symlinkSync("../blobs/def456", path.join(sharded, shard));
    await refused(
      { checkpoint: sharded, modelFile: GPTJ_MODEL },
      `${path.join(sharded, "model.safetensors.index.json")}: shard file "${shard}" does not exist (it should hold tensor "${name}"): it is a link to ../blobs/def456, which does not exist (an incomplete download?)`,
      "CheckpointError",
    );
  });
});

describe("a write that fails", () => {
  it('--emit onnx past the disk\'s room names the file it was writing (it said only "EFBIG: file too large, write")', () => {
    // A file-size limit stands in for a full disk: with SIGXFSZ ignored, a write past it fails with EFBIG.
    const dir = tmpDir("tsllm-safety-");
    const out = path.join(dir, "onnx");
    const args = [path.join(REPO, "bin/tsllm-compile.mjs"), LLAMA_MODEL, "--checkpoint", TINY_LLAMA];
    const cmd = `trap '' XFSZ; ulimit -f 200; exec "$0" "$@" --sm 90 --emit onnx -o ${JSON.stringify(out)}`;
    const r = spawnSync("bash", ["-c", cmd, process.execPath, ...args], {
      encoding: "utf8",
      timeout: 60_000,
    });
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(
      /^error: \S+\/onnx\.tmp-[^/]+\/rank0\.onnx\.data: EFBIG: file too large, write$/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it("an engine's config.json and report files past it are named too", () => {
    // The default config's random-weight rank file (12 KiB) fits in 16 KiB; report.html (23 KiB) does not.
    const dir = tmpDir("tsllm-safety-");
    const out = path.join(dir, "engine");
    const cmd = `trap '' XFSZ; ulimit -f 16; exec "$0" "$@" --sm 90 -o ${JSON.stringify(out)}`;
    const r = spawnSync(
      "bash",
      ["-c", cmd, process.execPath, path.join(REPO, "bin/tsllm-compile.mjs"), LLAMA_MODEL],
      {
        encoding: "utf8",
        timeout: 60_000,
      },
    );
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toMatch(
      /^error: \S+\/engine\.tmp-[^/]+\/report\.html: EFBIG: file too large, write$/,
    );
    expect(fs.readdirSync(dir)).toEqual([]);
  });
});

describe("--golden files the engine cannot run, refused before the load, naming the file and the prompt", () => {
  const golden = readGolden(GOLDEN);
  const engine = { vocabSize: 512, maxSeqLen: 256, maxNumTokens: 256 };

  it("checkGoldenFits: vocabulary, token ids, max_seq_len, max_num_tokens", () => {
    expect(() => checkGoldenFits(golden, GOLDEN, engine)).not.toThrow();
    const lens = golden.prompts.map((p) => [p.promptLen, p.inputIds.length]);
    expect(lens).toEqual([
      [5, 17],
      [11, 23],
      [16, 28],
    ]);
    const fits = (e: Partial<typeof engine>) => () => checkGoldenFits(golden, GOLDEN, { ...engine, ...e });
    expect(fits({ vocabSize: 600 })).toThrow(
      `${GOLDEN}: p0: logits have vocabulary 512, the engine's is 600 (goldens of another model?)`,
    );
    expect(fits({ maxSeqLen: 17 })).toThrow(
      `${GOLDEN}: p1: 23 tokens (prompt and continuation), over the engine's max_seq_len 17`,
    );
    expect(fits({ maxSeqLen: 28 })).not.toThrow();
    expect(fits({ maxNumTokens: 10 })).toThrow(
      `${GOLDEN}: p1: a 11-token prompt, prefilled in one step, over the engine's max_num_tokens 10`,
    );
    expect(fits({ maxNumTokens: 16 })).not.toThrow();
    const big = { prompts: [{ ...golden.prompts[0], inputIds: [1, 512, 3] }], metadata: {} };
    expect(() => checkGoldenFits(big, "g", engine)).toThrow(
      "g: p0: input_ids hold token id 512, outside the engine's vocabulary (0..511)",
    );
  });

  it("tsllm-run --golden on an engine too short for the prompts: the golden file named, before loading", async () => {
    // The engine's last weight byte is changed, so a refusal that came after the load would be the hash error.
    // (The old code loaded, then failed with "sequence 1000 would reach 9 tokens, over max_seq_len 8".)
    const dir = await buildFixture("llama", { maxSeqLen: 8, maxNumTokens: 8 });
    corruptLastWeightByte(dir, "rank0.engine");
    const r = spawnSync(
      process.execPath,
      [path.join(REPO, "bin/tsllm-run.mjs"), dir, "--device", "cpu", "--golden", GOLDEN],
      { encoding: "utf8", timeout: 60_000 },
    );
    expect(r.status).toBe(1);
    expect(r.stderr.trim()).toBe(
      `error: ${GOLDEN}: p0: 17 tokens (prompt and continuation), over the engine's max_seq_len 8`,
    );
  });
});
