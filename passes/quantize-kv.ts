// FP8 KV cache (--kv-cache-dtype fp8): attention stores K and V as E4M3 with one scale per tensor (per
// layer, for K and for V): stored = e4m3(x / scale) (RNE, saturating), read back as stored · scale.
// Without calibration data the scales are 1.0, as TensorRT-LLM uses for uncalibrated FP8 KV caches
// (E4M3 covers ±448 with 3 mantissa bits, far beyond K/V magnitudes); they are attributes, so a
// calibration step can set them. Tokens of the current step attend to their own K/V before rounding
// (the context kernel reads them from registers); every later step reads them from the cache.
import type { BuildConfig } from "../src/engine/format.ts";
import { cloneGraph } from "../src/ir/builder.ts";
import type { Graph } from "../src/ir/types.ts";
import { checkQuantLegality } from "./quantize-weights.ts";

export function quantizeKvCache(g0: Graph, build: BuildConfig): Graph {
  checkQuantLegality(build);
  if (build.kv_cache_dtype !== "fp8") return g0;
  const g = cloneGraph(g0);
  for (const n of g.nodes)
    if (n.attrs.layer !== undefined && n.attrs.num_kv_heads !== undefined)
      Object.assign(n.attrs, { kv_cache_dtype: "fp8", k_scale: 1, v_scale: 1 });
  return g;
}
