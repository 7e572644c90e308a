// Host-side sampling for the reference executor (the CUDA runtime samples on the GPU): greedy,
// temperature, top-k, top-p, with a seeded counter-based generator so a seed repeats exactly. The allowed set is as
// on the GPU: temperature scales the logits, top-k keeps those >= the k-th largest, then top-p those >= the smallest
// logit the most likely tokens reaching top_p of top-k's renormalised mass need (ties at a threshold all kept).
import { lowbias32 } from "../weights/random.ts";
import { seedKey32 } from "./seed.ts";

export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  /** Any seed seed.ts accepts (a safe integer, or a u64 as a bigint); every bit of it counts. */
  seed: number | bigint;
}

// A NaN logit (a numeric fault upstream, e.g. an fp16 overflow) is never chosen: it compares as -Infinity, as in
// the GPU's sampler (native/src/kernels/sampling.cu), where a NaN never wins a comparison.
const key = (x: number) => (Number.isNaN(x) ? -Number.POSITIVE_INFINITY : x);

export function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (key(row[i]) > key(row[best])) best = i;
  return best;
}

export function sampleToken(row: Float32Array, p: SamplingParams, step: number): number {
  if (p.temperature <= 0 || p.topK === 1) return argmax(row);
  // A +Infinity logit outweighs every finite one, and a row of -Infinity / NaN has no distribution: both greedy,
  // as on the GPU (without this, exp(Infinity - Infinity) made every weight NaN and the least likely token won).
  const best = argmax(row);
  if (!Number.isFinite(row[best])) return best;
  const idx = Array.from(row.keys()).sort((a, b) => key(row[b]) - key(row[a]) || a - b);
  // Ties at a top-k / top-p threshold are all kept, as on the GPU (its allowed set is every logit >= the threshold)
  // and in transformers' top-k: cutting them by index made the CPU draw from fewer tokens than the GPU.
  const withTies = (n: number) => {
    while (n < idx.length && key(row[idx[n]]) === key(row[idx[n - 1]])) n++;
    return n;
  };
  const k = withTies(p.topK > 0 ? Math.min(p.topK, idx.length) : idx.length);
  const max = row[best];
  const probs = idx.slice(0, k).map((i) => Math.exp((key(row[i]) - max) / p.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = k;
  if (p.topP < 1) {
    let acc = 0;
    for (let i = 0; i < k; i++) {
      acc += probs[i] / total;
      if (acc >= p.topP) {
        keep = withTies(i + 1);
        break;
      }
    }
  }
  const mass = probs.slice(0, keep).reduce((a, b) => a + b, 0);
  const u = (lowbias32((seedKey32(p.seed) ^ Math.imul(step + 1, 0x9e3779b9)) >>> 0) / 2 ** 32) * mass;
  let acc = 0;
  for (let i = 0; i < keep; i++) {
    acc += probs[i];
    if (u < acc) return idx[i];
  }
  return idx[keep - 1];
}
