// Weight quantisation (--quant fp8 | int8-wo | int4-wo): every linear becomes a quant_linear whose
// weight is stored quantised and whose scales are a companion weight computed from the same recipe
// (quantised while the engine streams; nothing is read here). Runs after fusion (fused QKV / gate-up
// weights are quantised whole, per output channel) and before memory planning.
//
// Kept in higher precision, as TensorRT-LLM does: lm_head (its logits feed sampling directly, and it is
// small next to the decoder) and the embedding (a row gather, not a GEMM: nothing to gain).
import type { BuildConfig } from "../src/engine/format.ts";
import { addValue, cloneGraph } from "../src/ir/builder.ts";
import type { DType, Graph, Node, QuantReport, Value } from "../src/ir/types.ts";
import {
  type QuantScheme,
  randomInits,
  scalesShape,
  storedDtype,
  storedShape,
} from "../src/quant/weights.ts";

export class QuantError extends Error {
  override name = "QuantError";
}

export type { QuantReport };

/** FP8 tensor cores (and FP8 conversions in hardware) start with Ada (sm 89) and Hopper (sm 90). */
export function checkQuantLegality(build: BuildConfig): void {
  if (build.quant === "fp8" && build.sm < 89)
    throw new QuantError(
      `--quant fp8 needs --sm 89 or newer (FP8 tensor cores: Ada, Hopper); --sm ${build.sm} has none`,
    );
  if (build.kv_cache_dtype === "fp8" && build.sm < 89)
    throw new QuantError(
      `--kv-cache-dtype fp8 needs --sm 89 or newer (FP8 conversions: Ada, Hopper); --sm ${build.sm} has none`,
    );
}

const LM_HEAD_REASON =
  "lm_head: logits feed sampling directly; kept in the engine dtype as TensorRT-LLM does";
const ROUTER_REASON =
  "MoE router: a rounding error here flips which experts a token uses; kept in the engine dtype as TensorRT-LLM does";
const EMBED_REASON = "embedding: a row gather, not a GEMM, nothing to gain from quantising";

function feedsLogits(g: Graph, n: Node): boolean {
  let id = n.outputs[0];
  for (;;) {
    if (Object.values(g.outputs).includes(id)) return true;
    const next = g.nodes.find((m) => m.inputs.includes(id));
    if (next?.op !== "all_gather") return false;
    id = next.outputs[0];
  }
}

export function quantizeWeights(g0: Graph, build: BuildConfig): Graph {
  checkQuantLegality(build);
  const report: QuantReport = {
    scheme: build.quant,
    kvCacheDtype: build.kv_cache_dtype,
    quantized: [],
    kept: [],
  };
  if (build.quant === "none") return g0;
  const scheme = build.quant as QuantScheme;
  const g = cloneGraph(g0);
  const groupSize = scheme === "int4-wo" ? build.group_size : undefined;
  for (const n of g.nodes) {
    if (n.op === "moe") {
      quantizeExperts(g, n, scheme, groupSize, build);
      for (const k of [2, 3, 4]) report.quantized.push(g.values.get(n.inputs[k]!)!.name);
      continue;
    }
    if (n.op === "embedding")
      report.kept.push({ name: g.values.get(n.inputs[1]!)!.name, reason: EMBED_REASON });
    if (n.op !== "linear") continue;
    const w = g.values.get(n.inputs[1]!)!;
    if (w.kind !== "weight" || w.recipe?.kind !== "checkpoint") continue;
    if (g.nodes.some((m) => m.op === "moe" && m.inputs[1] === n.outputs[0])) {
      report.kept.push({ name: w.name, reason: ROUTER_REASON });
      continue;
    }
    if (w.hints?.parallel === "vocab" || feedsLogits(g, n)) {
      report.kept.push({ name: w.name, reason: LM_HEAD_REASON });
      continue;
    }
    const [N, K] = w.shape as number[];
    if (scheme === "int4-wo") {
      if (K % groupSize!)
        throw new QuantError(
          `--group-size ${groupSize}: does not divide the input dim ${K} of ${w.name}${build.tp > 1 ? ` (per rank at --tp ${build.tp})` : ""}`,
        );
      if (groupSize! % 2)
        throw new QuantError(
          `--group-size ${groupSize}: int4 values are packed in pairs, use an even group size`,
        );
    }
    const { values, scales } = quantizedPair(g, w, scheme, groupSize, N, K, w.dtype);
    n.op = "quant_linear";
    n.inputs = [n.inputs[0], values.id, scales.id, n.inputs[2] ?? null, n.inputs[3] ?? null];
    n.attrs = {
      ...n.attrs,
      quant: scheme,
      compute_dtype: w.dtype,
      ...(groupSize ? { group_size: groupSize } : {}),
    };
    report.quantized.push(w.name);
  }
  g.meta = { ...g.meta, quant: report };
  return g;
}

/**
 * A mixture-of-experts block's stacked expert weights (w1, w3 [E·I, H], w2 [E·H, I]) quantised per
 * output row like any linear weight: the moe op takes the scales as its optional inputs (and, for
 * fp8, quantises the activations entering each expert GEMM per token, as quant_linear does). The
 * router is kept in the engine dtype (see ROUTER_REASON).
 */
function quantizeExperts(
  g: Graph,
  n: Node,
  scheme: QuantScheme,
  groupSize: number | undefined,
  build: BuildConfig,
): void {
  const computeDtype = g.values.get(n.inputs[2]!)!.dtype;
  const scales: number[] = [];
  for (const k of [2, 3, 4]) {
    const w = g.values.get(n.inputs[k]!)!;
    const [N, K] = w.shape as number[];
    if (groupSize && K % groupSize)
      throw new QuantError(
        `--group-size ${groupSize}: does not divide the input dim ${K} of ${w.name}${build.tp > 1 ? ` (per rank at --tp ${build.tp})` : ""}`,
      );
    const pair = quantizedPair(g, w, scheme, groupSize, N, K, computeDtype);
    n.inputs[k] = pair.values.id;
    scales.push(pair.scales.id);
  }
  n.inputs = [...n.inputs.slice(0, 5), ...scales];
  n.attrs = {
    ...n.attrs,
    quant: scheme,
    compute_dtype: computeDtype,
    ...(groupSize ? { group_size: groupSize } : {}),
  };
}

/**
 * The quantised weight and its scales: new values with adjacent ids, recipes from the same sources.
 * Weight-only scales of an f16 / bf16 compute dtype are rounded up to it (scale_dtype), so the GPU
 * dequantises with an exact half-precision multiply (src/quant/weights.ts).
 */
function quantizedPair(
  g: Graph,
  w: Value,
  scheme: QuantScheme,
  groupSize: number | undefined,
  N: number,
  K: number,
  computeDtype: DType,
) {
  const r = w.recipe as Extract<Value["recipe"], { kind: "checkpoint" }>;
  const scaleDtype =
    scheme !== "fp8" && (computeDtype === "f16" || computeDtype === "bf16") ? computeDtype : undefined;
  const spec = { scheme, groupSize, scaleDtype };
  const inits = randomInits(spec, r.init);
  const q = {
    op: "quantize" as const,
    scheme,
    ...(groupSize ? { group_size: groupSize } : {}),
    ...(scaleDtype ? { scale_dtype: scaleDtype } : {}),
  };
  const values = addValue(g, {
    name: w.name,
    dtype: storedDtype(scheme),
    shape: storedShape(spec, N, K),
    kind: "weight",
    recipe: { ...r, transforms: [...r.transforms, { ...q, output: "values" }], init: inits.weight },
    hints: { ...w.hints, quant: scheme },
  });
  const scales = addValue(g, {
    name: `${w.name.replace(/\.weight$/, "")}.weight_scale`,
    dtype: "f32",
    shape: scalesShape(spec, N, K),
    kind: "weight",
    recipe: { ...r, transforms: [...r.transforms, { ...q, output: "scales" }], init: inits.scales },
    hints: { role: "scales", quant: scheme },
  });
  return { values, scales };
}
