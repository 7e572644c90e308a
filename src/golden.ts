// Golden logits files (../shared/fixtures/README.md): per prompt i, p{i}.input_ids int32 [T] (prompt +
// greedy continuation) and p{i}.logits f32 [T, vocab] from one teacher-forced transformers forward.
import { CheckpointError } from "./checkpoint/errors.ts";
import { openSafetensors } from "./checkpoint/safetensors.ts";
import { argmax } from "./executor/sampling.ts";
import type { Executor } from "./executor/types.ts";

export interface GoldenPrompt {
  inputIds: number[];
  promptLen: number;
  logits: Float32Array;
  vocab: number;
}

export interface Golden {
  prompts: GoldenPrompt[];
  metadata: Record<string, string>;
}

export function readGolden(file: string): Golden {
  const f = openSafetensors(file);
  const bad = (detail: string) => new CheckpointError(file, detail);
  try {
    const lens = (f.metadata.prompt_lens ?? "").split(",").filter(Boolean).map(Number);
    const prompts: GoldenPrompt[] = [];
    for (let i = 0; f.has(`p${i}.input_ids`); i++) {
      const idsInfo = f.info(`p${i}.input_ids`);
      if (idsInfo.dtype !== "I32" || idsInfo.shape.length !== 1)
        throw bad(`p${i}.input_ids must be I32 [T], is ${idsInfo.dtype} [${idsInfo.shape.join(", ")}]`);
      const b = f.read(`p${i}.input_ids`);
      const ids = Array.from(new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4));
      if (ids.length === 0) throw bad(`p${i}.input_ids is empty`);
      if (ids.some((t) => t < 0)) throw bad(`p${i}.input_ids holds a negative token id`);
      if (!f.has(`p${i}.logits`)) throw bad(`p${i}.logits is missing`);
      const li = f.info(`p${i}.logits`);
      if (li.dtype !== "F32" || li.shape.length !== 2 || li.shape[0] !== ids.length || li.shape[1] < 1)
        throw bad(`p${i}.logits must be F32 [${ids.length}, vocab], is ${li.dtype} [${li.shape.join(", ")}]`);
      const lb = f.read(`p${i}.logits`);
      const promptLen = lens[i] ?? ids.length;
      if (!(Number.isInteger(promptLen) && promptLen >= 1 && promptLen <= ids.length))
        throw bad(`prompt_lens[${i}] = ${lens[i]} is out of range (1..${ids.length})`);
      prompts.push({
        inputIds: ids,
        promptLen,
        logits: new Float32Array(lb.buffer, lb.byteOffset, lb.byteLength / 4),
        vocab: li.shape[1],
      });
    }
    // The prompts end at the first missing p{i}.input_ids: a prompt tensor beyond it (a later prompt, or logits
    // without their ids) would go unchecked, as would prompt lengths that do not pair up with the prompts.
    const stray = f
      .names()
      .filter(
        (n) => /^p\d+\.(input_ids|logits)$/.test(n) && Number(n.slice(1, n.indexOf("."))) >= prompts.length,
      )
      .sort()[0];
    if (stray !== undefined) throw bad(`p${prompts.length}.input_ids is missing (the file holds ${stray})`);
    if (prompts.length === 0) throw bad("no prompts (expected p0.input_ids, p0.logits, …)");
    if (lens.length > 0 && lens.length !== prompts.length)
      throw bad(
        `prompt_lens has ${lens.length} ${lens.length === 1 ? "entry" : "entries"} for ${prompts.length} prompts`,
      );
    return { prompts, metadata: f.metadata };
  } finally {
    f.close();
  }
}

/**
 * Refuses, before an engine is loaded, a golden file that the engine cannot run: logits of another vocabulary
 * (another model's goldens), token ids outside it, or a prompt the engine's limits cannot hold (the prompt is
 * prefilled in one step, the continuation fed one token at a time). Each refusal names the file and the prompt;
 * without this the executor refused mid-check, naming its own sequence number, after the load.
 */
export function checkGoldenFits(
  golden: Golden,
  file: string,
  engine: { vocabSize: number; maxSeqLen: number; maxNumTokens: number },
): void {
  golden.prompts.forEach((p, i) => {
    const bad = (detail: string) => new CheckpointError(file, `p${i}: ${detail}`);
    if (p.vocab !== engine.vocabSize)
      throw bad(
        `logits have vocabulary ${p.vocab}, the engine's is ${engine.vocabSize} (goldens of another model?)`,
      );
    const id = p.inputIds.find((t) => t >= engine.vocabSize);
    if (id !== undefined)
      throw bad(
        `input_ids hold token id ${id}, outside the engine's vocabulary (0..${engine.vocabSize - 1})`,
      );
    if (p.inputIds.length > engine.maxSeqLen)
      throw bad(
        `${p.inputIds.length} tokens (prompt and continuation), over the engine's max_seq_len ${engine.maxSeqLen}`,
      );
    if (p.promptLen > engine.maxNumTokens)
      throw bad(
        `a ${p.promptLen}-token prompt, prefilled in one step, over the engine's max_num_tokens ${engine.maxNumTokens}`,
      );
  });
}

export interface GoldenReport {
  perPrompt: {
    maxAbs: number;
    prefillMaxAbs: number;
    decodeMaxAbs: number;
    top1Agree: number;
    positions: number;
  }[];
  maxAbs: number;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

/**
 * Prefills each prompt, then teacher-forces the golden continuation one token per step, comparing
 * every position's logits. `batched` runs all prompts together in each step (packed), else one by one.
 */
export function checkGolden(
  ex: Executor,
  golden: Golden,
  o: { batched?: boolean; seqBase?: number } = {},
): GoldenReport {
  const base = o.seqBase ?? 1000;
  const stats = golden.prompts.map(() => ({
    maxAbs: 0,
    prefillMaxAbs: 0,
    decodeMaxAbs: 0,
    top1Agree: 0,
    positions: 0,
  }));
  const compare = (pi: number, pos: number, row: Float32Array) => {
    const p = golden.prompts[pi];
    if (row.length !== p.vocab) throw new Error(`engine vocab ${row.length} != golden vocab ${p.vocab}`);
    const want = p.logits.subarray(pos * p.vocab, (pos + 1) * p.vocab);
    const d = maxAbsDiff(row, want);
    const s = stats[pi];
    s.maxAbs = Math.max(s.maxAbs, d);
    if (pos < p.promptLen) s.prefillMaxAbs = Math.max(s.prefillMaxAbs, d);
    else s.decodeMaxAbs = Math.max(s.decodeMaxAbs, d);
    s.top1Agree += argmax(row) === argmax(want) ? 1 : 0;
    s.positions++;
  };
  const groups = o.batched ? [golden.prompts.map((_, i) => i)] : golden.prompts.map((_, i) => [i]);
  for (const group of groups) {
    const prefill = ex.step(
      group.map((i) => ({
        seqId: base + i,
        tokens: golden.prompts[i].inputIds.slice(0, golden.prompts[i].promptLen),
        logits: "all",
      })),
    );
    for (const i of group) prefill.get(base + i)!.forEach((row, pos) => compare(i, pos, row));
    const maxLen = Math.max(...group.map((i) => golden.prompts[i].inputIds.length));
    for (let pos = 0; pos < maxLen; pos++) {
      const active = group.filter(
        (i) => pos >= golden.prompts[i].promptLen && pos < golden.prompts[i].inputIds.length,
      );
      if (active.length === 0) continue;
      const res = ex.step(
        active.map((i) => ({ seqId: base + i, tokens: [golden.prompts[i].inputIds[pos]], logits: "last" })),
      );
      for (const i of active) compare(i, pos, res.get(base + i)![0]);
    }
    for (const i of group) ex.release(base + i);
  }
  return { perPrompt: stats, maxAbs: Math.max(...stats.map((s) => s.maxAbs)) };
}

/**
 * Default max |Δlogit| for an engine against transformers' fp32 goldens: fp32 math on the CPU agrees to
 * ~1e-4; half precision (activations or KV cache) differs more; quantised engines by the bounds their tests justify
 * (test/quant: int8-wo 0.1, fp8 0.5 — E4M3's 3 mantissa bits on both GEMM operands — int4-wo 1.25).
 */
export function defaultTolerance(
  build: { dtype: string; quant: string; kv_cache_dtype: string },
  cpu: boolean,
): number {
  // An fp16 / bf16 KV cache rounds K and V as half-precision activations would (fp32 tiny-llama with a bf16
  // cache: 6.6e-3), so only an fp32 engine with an fp32 (or fp8, bounded below) cache gets the fp32 bound.
  const halfKv = build.kv_cache_dtype === "fp16" || build.kv_cache_dtype === "bf16";
  const base = cpu && build.dtype === "fp32" && !halfKv ? 1e-3 : 0.05;
  const quant = { none: 0, "int8-wo": 0.1, fp8: 0.5, "int4-wo": 1.25 }[build.quant] ?? 0;
  // Rounded to 12 digits: tsllm-run prints the bound, and 0.1 + 0.2 would read "tolerance 0.30000000000000004".
  return Number((Math.max(base, quant) + (build.kv_cache_dtype === "fp8" ? 0.2 : 0)).toPrecision(12));
}
