// Shared by the GPU tests: fixture paths ($TSLLM_SHARED or ../shared beside the checkout) and engines
// compiled by the TypeScript compiler into a temporary directory, once per configuration.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { type CompileOptions, compileEngine } from "../src/compile.ts";
import type { Executor } from "../src/executor/types.ts";
import type { Golden } from "../src/golden.ts";

export const REPO = fileURLToPath(new URL("..", import.meta.url));
export const SHARED = process.env.TSLLM_SHARED ?? path.resolve(REPO, "../shared");
/** A fixture under ../shared/fixtures/tiny-<which>, compiled with models/<which>.ts. */
export type Tiny = "llama" | "gptj" | "qwen2" | "mixtral";
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

/** A random-weight fp16 engine of a fixture's config (seed 5; weights generated from seeds, no checkpoint read). */
export async function randomEngine(which: Tiny): Promise<string> {
  const out = path.join(await tinyEngine(which, "fp16"), "..", "random");
  await compileEngine({
    modelFile: path.join(REPO, "models", `${which}.ts`),
    config: path.join(fixture(which), "config.json"),
    randomWeights: true,
    seed: 5,
    sm: 80,
    dtype: "fp16",
    maxNumTokens: 64,
    maxSeqLen: 64,
    maxBatchSize: 2,
    out,
  });
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

/** Every logits row of the prefill (all prompt positions) and of each teacher-forced decode step, per prompt. */
export function teacherForced(ex: Executor, g: Golden, base: number): Float32Array[] {
  const rows: Float32Array[][] = g.prompts.map(() => []);
  g.prompts.forEach((p, i) => {
    rows[i].push(
      ...ex
        .step([{ seqId: base + i, tokens: p.inputIds.slice(0, p.promptLen), logits: "all" }])
        .get(base + i)!,
    );
    for (let pos = p.promptLen; pos < p.inputIds.length; pos++)
      rows[i].push(
        ex.step([{ seqId: base + i, tokens: [p.inputIds[pos]], logits: "last" }]).get(base + i)![0],
      );
    ex.release(base + i);
  });
  return rows.map((r) => {
    const out = new Float32Array(r.length * r[0].length);
    r.forEach((row, k) => out.set(row, k * row.length));
    return out;
  });
}

/** Max |Δlogit| between every prompt of `g` run alone (all positions) and all of them packed in one step. */
export function packedVsOneByOne(ex: Executor, g: Golden, base: number): number {
  const one = g.prompts.map((p, i) => {
    const rows = ex.step([{ seqId: base + i, tokens: p.inputIds, logits: "all" }]).get(base + i)!;
    ex.release(base + i);
    return rows;
  });
  const packed = ex.step(
    g.prompts.map((p, i) => ({ seqId: base + 100 + i, tokens: p.inputIds, logits: "all" })),
  );
  let max = 0;
  one.forEach((rows, i) =>
    rows.forEach((row, r) => (max = Math.max(max, maxAbsDiff(row, packed.get(base + 100 + i)![r])))),
  );
  g.prompts.forEach((_, i) => ex.release(base + 100 + i));
  return max;
}
