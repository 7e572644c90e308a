// Shared by the GPU tests: fixture paths ($TSLLM_SHARED or ../shared beside the checkout) and engines
// compiled by the TypeScript compiler into a temporary directory, once per configuration.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type CompileOptions, compileEngine } from "../src/compile.ts";

export const REPO = fileURLToPath(new URL("..", import.meta.url));
export const SHARED = process.env.TSLLM_SHARED ?? path.resolve(REPO, "../shared");
/** A fixture under ../shared/fixtures/tiny-<which>, compiled with models/<which>.ts. */
export type Tiny = "llama" | "gptj" | "qwen2";
export const fixture = (which: Tiny) => path.join(SHARED, "fixtures", `tiny-${which}`);
export const goldenFile = (which: Tiny) => path.join(fixture(which), "golden.safetensors");

const built = new Map<string, string>();

/** Compiles a tiny fixture from its checkpoint (small limits) and returns the engine dir. */
export async function tinyEngine(
  which: Tiny,
  dtype: "fp16" | "bf16",
  extra: Partial<CompileOptions> = {},
): Promise<string> {
  const key = JSON.stringify([which, dtype, extra]);
  const hit = built.get(key);
  if (hit) return hit;
  const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-gpu-")), "engine");
  await compileEngine({
    modelFile: path.join(REPO, "models", `${which}.ts`),
    checkpoint: fixture(which),
    sm: 80,
    dtype,
    maxNumTokens: 256,
    maxSeqLen: 256,
    maxBatchSize: 8,
    out,
    ...extra,
  });
  built.set(key, out);
  return out;
}

export function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Number.POSITIVE_INFINITY : d;
  }
  return m;
}
