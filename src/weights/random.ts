// Deterministic random weights shared bit-for-bit with the CUDA runtime (native random_fill):
// u = lowbias32(lowbias32(seed) ^ i), r = (u >>> 8) / 2^24, value = mean + scale * (2r - 1) in fp32.

export function lowbias32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

export function randomFill(
  n: number,
  seed: number,
  mean: number,
  scale: number,
  out = new Float32Array(n),
): Float32Array {
  if (n > 2 ** 32) throw new Error(`random weight of ${n} elements exceeds 2^32`);
  const h = lowbias32(seed >>> 0);
  const fm = Math.fround(mean);
  const fs = Math.fround(scale);
  for (let i = 0; i < n; i++) {
    const u = lowbias32((h ^ i) >>> 0);
    const r = (u >>> 8) / 16777216;
    out[i] = Math.fround(fm + Math.fround(fs * (2 * r - 1)));
  }
  return out;
}

/** Per-weight seed from the build seed and the weight's name (FNV-1a), so weights differ from each other. */
export function weightSeed(buildSeed: number, name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return lowbias32((h ^ lowbias32(buildSeed >>> 0)) >>> 0);
}
