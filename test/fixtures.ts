// Paths to ../shared/fixtures and a helper that compiles an engine into a temporary directory.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll } from "vitest";
import type { TensorToWrite } from "../src/checkpoint/safetensors.ts";
import { type CompileOptions, compileEngine } from "../src/compile.ts";
import { Module } from "../src/dsl/module.ts";
import { BuildConfig } from "../src/engine/format.ts";
import { loadModelFile } from "../src/model-file.ts";

export const REPO = fileURLToPath(new URL("..", import.meta.url));
export const SHARED = path.resolve(REPO, "../shared");
export const FIXTURES = path.join(SHARED, "fixtures");
export const TINY_LLAMA = path.join(FIXTURES, "tiny-llama");
export const TINY_GPTJ = path.join(FIXTURES, "tiny-gptj");
export const TINY_QWEN2 = path.join(FIXTURES, "tiny-qwen2");
export const TINY_MIXTRAL = path.join(FIXTURES, "tiny-mixtral");
export const LLAMA_MODEL = path.join(REPO, "models/llama.ts");
export const GPTJ_MODEL = path.join(REPO, "models/gptj.ts");
export const QWEN2_MODEL = path.join(REPO, "models/qwen2.ts");
export const MIXTRAL_MODEL = path.join(REPO, "models/mixtral.ts");

/** Deterministic uniform values in [-scale, scale) (a 32-bit LCG), for synthetic checkpoints. */
export function uniform(n: number, seed: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 - 0.5) * 2 * scale;
  }
  return out;
}

/**
 * Max |Δlogit| allowed for an fp32 engine against the fixture's transformers goldens, ~3× what is
 * measured (the fp32 summation order differs from PyTorch's). Measured max |Δlogit| (this suite's prints):
 *   tiny-llama  reference executor 2.92e-6 (tp 2 2.92e-6, tp 4 2.86e-6, any one pass disabled ≤ 2.92e-6),
 *               ONNX Runtime tp 1 2.32e-6, tp 2 2.15e-6
 *   tiny-gptj   reference executor 6.72e-5 (tp 2 6.72e-5, any one pass disabled ≤ 6.72e-5),
 *               ONNX Runtime tp 1 6.68e-5, tp 2 6.68e-5
 */
export const FP32_GOLDEN_BOUND = { llama: 1e-5, gptj: 2e-4 } as const;

/** tiny-llama's graph as models/llama.ts builds it: fp32, one sequence of up to 8 tokens. */
export async function tinyLlamaGraph(): Promise<Module["graph"]> {
  const model = await loadModelFile(LLAMA_MODEL);
  const cfg = model.parseConfig(
    JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8")),
    "x",
  );
  const m = new Module("f32", { maxBatchSize: 1, maxSeqLen: 8, maxNumTokens: 8 });
  model.forward(m, cfg);
  return m.graph;
}

/** The build of tinyLlamaGraph (fp32, sm 90, tp 1, checkpoint weights), with `extra` fields over it. */
export function tinyLlamaBuild(extra: Record<string, unknown> = {}): BuildConfig {
  return BuildConfig.parse({
    ...{ sm: 90, tp: 1, dtype: "fp32", kv_cache_dtype: "fp32" },
    ...{ max_batch_size: 1, max_seq_len: 8, max_num_tokens: 8, tokens_per_block: 32 },
    ...{ random_weights: false, seed: 0 },
    ...extra,
  });
}

// Folders from tmpDir() are removed when the test file that made them is done (this module is evaluated once per
// test file, so the hook is that file's). Before, every one stayed: a full run left about 70 folders behind, and
// the mutation runs, which repeat the tests thousands of times, tens of thousands (over 50 GB here).
const made: string[] = [];
afterAll(() => {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

/** A fresh folder under the system's temporary folder, removed after the current test file. */
export function tmpDir(prefix = "tsllm-test-"): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  made.push(d);
  return d;
}

export async function buildFixture(
  which: "llama" | "gptj",
  extra: Partial<CompileOptions> = {},
): Promise<string> {
  const out = path.join(tmpDir(), "engine");
  await compileEngine({
    modelFile: which === "llama" ? LLAMA_MODEL : GPTJ_MODEL,
    checkpoint: which === "llama" ? TINY_LLAMA : TINY_GPTJ,
    sm: 90,
    dtype: "fp32",
    maxNumTokens: 256,
    maxSeqLen: 256,
    maxBatchSize: 8,
    out,
    ...extra,
  });
  return out;
}

/**
 * Flips the last byte of `engine`'s (first) rank file: a weight byte, so the engine still opens and only the
 * content hash check at load refuses it (what a refusal test uses to prove its check came before the load).
 */
export function corruptLastWeightByte(engine: string, rankFile: string): void {
  const fd = fs.openSync(path.join(engine, rankFile), "r+");
  try {
    const size = fs.fstatSync(fd).size;
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, size - 1);
    b[0] ^= 0x55;
    fs.writeSync(fd, b, 0, 1, size - 1);
  } finally {
    fs.closeSync(fd);
  }
}

/** Every path under `root` with its type, content hash and mtime: any touch shows up as a difference. */
export function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const n of fs.readdirSync(d).sort()) {
      const p = path.join(d, n);
      const st = fs.lstatSync(p);
      const rel = path.relative(root, p);
      if (st.isDirectory()) {
        out[rel] = "dir";
        walk(p);
      } else if (st.isSymbolicLink()) out[rel] = `link ${fs.readlinkSync(p)}`;
      else if (st.isFIFO()) out[rel] = "fifo";
      else out[rel] = `${createHash("sha256").update(fs.readFileSync(p)).digest("hex")} ${st.mtimeMs}`;
    }
  };
  walk(root);
  return out;
}

/** A golden file's tensors as src/golden.ts reads them: p{i}.input_ids (I32) and p{i}.logits (F32, `shape`). */
export function goldenTensors(
  ps: readonly { ids: readonly number[]; logits: Float32Array; shape: number[] }[],
): Record<string, TensorToWrite> {
  const t: Record<string, TensorToWrite> = {};
  ps.forEach((p, i) => {
    t[`p${i}.input_ids`] = {
      dtype: "I32",
      shape: [p.ids.length],
      data: new Uint8Array(Int32Array.from(p.ids).buffer),
    };
    t[`p${i}.logits`] = { dtype: "F32", shape: p.shape, data: new Uint8Array(p.logits.buffer) };
  });
  return t;
}
