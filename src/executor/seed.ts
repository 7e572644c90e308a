// Sampling seeds: the one place a seed is checked and reduced, for every sampler. A seed is the u64 the GPU's Philox
// sampler keys on (native/src/kernels/sampling.cu); the CPU sampler folds that u64 to its 32-bit key. The CPU took
// seed >>> 0 (seeds differing above bit 31 sampled alike, where the GPU's differed) and the GPU refused negative
// ones mid-step; seed + j past 2^53 lost digits (two of a request's n choices sampling alike).
import { lowbias32 } from "../weights/random.ts";

const U64 = 1n << 64n;

/** What a seed may be: vLLM takes any int64 (seed: Field(ge=_LONG_INFO.min, le=_LONG_INFO.max)), but a JSON number
 *  or JS number past 2^53 has already lost digits, so two such seeds may be one. */
export const SEED_RANGE = "an integer from -(2^53 - 1) to 2^53 - 1";

/** Why `seed` cannot be honoured exactly ("must be …"), or undefined when it can. A bigint is a u64 (or an int64). */
export function seedProblem(seed: unknown): string | undefined {
  if (typeof seed === "bigint") return seed >= -(1n << 63n) && seed < U64 ? undefined : "must fit in 64 bits";
  if (typeof seed === "number" && Number.isSafeInteger(seed)) return undefined;
  return `must be ${SEED_RANGE}, got ${String(seed)}`;
}

/**
 * The u64 a sampler keys on: (seed + offset) mod 2^64, a negative seed as its two's complement (what C++'s
 * uint64_t(int64_t) gives). Exact for every seed seedProblem accepts; throws a RangeError naming `what` otherwise.
 */
export function seedU64(seed: number | bigint, offset = 0, what = "seed"): bigint {
  const bad = seedProblem(seed);
  if (bad) throw new RangeError(`${what} ${bad}`);
  return (((BigInt(seed) + BigInt(offset)) % U64) + U64) % U64;
}

/**
 * The CPU sampler's 32-bit key: lowbias32(lo ^ lowbias32(hi)) of the u64, so every bit counts; for a seed below 2^32
 * (hi = 0, lowbias32(0) = 0) it is lowbias32(seed), the key such seeds always had.
 */
export function seedKey32(seed: number | bigint): number {
  const u = seedU64(seed);
  const lo = Number(u & 0xffffffffn);
  const hi = Number(u >> 32n);
  return lowbias32((lo ^ lowbias32(hi)) >>> 0);
}
