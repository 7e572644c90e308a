// Paths to ../shared/fixtures and a helper that compiles an engine into a temporary directory.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type CompileOptions, compileEngine } from "../src/compile.ts";

export const REPO = fileURLToPath(new URL("..", import.meta.url));
export const SHARED = path.resolve(REPO, "../shared");
export const FIXTURES = path.join(SHARED, "fixtures");
export const TINY_LLAMA = path.join(FIXTURES, "tiny-llama");
export const TINY_GPTJ = path.join(FIXTURES, "tiny-gptj");
export const LLAMA_MODEL = path.join(REPO, "models/llama.ts");
export const GPTJ_MODEL = path.join(REPO, "models/gptj.ts");

export function tmpDir(prefix = "tsllm-test-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
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
