// Engine format v1 (docs/engine-format.md): the on-disk schema, validated with zod when read.
import { z } from "zod";

/** The smallest hash chunk a config.json may name (see `ranks[].hash`). */
const MIN_HASH_CHUNK_BYTES = 1 << 20;

export const FORMAT_VERSION = 1;
export const MAGIC = "TSLLMENG";
export const PREAMBLE_BYTES = 24;
export const DATA_ALIGN = 4096;
export const WEIGHT_ALIGN = 256;

/** GPU architectures an engine may target: the CUDA runtime needs sm 80 or newer (bf16, cp.async, ldmatrix). */
export const SUPPORTED_SMS = [80, 86, 87, 89, 90, 100, 120] as const;
export const MIN_SM = 80;
export const ENGINE_DTYPES = ["fp32", "fp16", "bf16"] as const;
export type EngineDType = (typeof ENGINE_DTYPES)[number];

/** The graph value dtype of an engine dtype (the weights' and activations' dtype before quantisation). */
export function valueDtypeOf(d: EngineDType): "f32" | "f16" | "bf16" {
  return d === "fp32" ? "f32" : d === "fp16" ? "f16" : "bf16";
}

const dim = z.union([
  z.number().int().nonnegative(),
  z.object({ sym: z.string(), max: z.number().int().positive() }),
]);
const attr: z.ZodType<unknown> = z.lazy(() =>
  z.union([
    z.number(),
    z.string(),
    z.boolean(),
    z.null(),
    z.array(z.union([z.number(), z.string()])),
    z.record(z.string(), attr),
  ]),
);

export const EngineHeader = z.object({
  format_version: z.number().int(),
  rank: z.number().int().nonnegative(),
  tp: z.number().int().positive(),
  sm: z.number().int(),
  dtype: z.enum(ENGINE_DTYPES),
  limits: z.object({
    max_batch_size: z.number().int().positive(),
    max_seq_len: z.number().int().positive(),
    max_num_tokens: z.number().int().positive(),
  }),
  kv_cache: z.object({
    num_layers: z.number().int().nonnegative(),
    num_kv_heads: z.number().int().positive(),
    head_dim: z.number().int().positive(),
    dtype: z.string(),
    tokens_per_block: z.number().int().positive(),
  }),
  values: z.array(
    z.object({
      id: z.number().int().nonnegative(),
      name: z.string(),
      dtype: z.enum(["f32", "f16", "bf16", "i32", "i8", "u8", "fp8e4m3"]),
      shape: z.array(dim),
      kind: z.enum(["input", "weight", "activation"]),
    }),
  ),
  inputs: z.record(z.string(), z.number().int()),
  outputs: z.record(z.string(), z.number().int()),
  weights: z.array(
    z.object({
      value: z.number().int(),
      offset: z.number().int().nonnegative(),
      nbytes: z.number().int().nonnegative(),
      random: z.object({ seed: z.number().int(), mean: z.number(), scale: z.number() }).nullable(),
    }),
  ),
  nodes: z.array(
    z.object({
      op: z.string(),
      inputs: z.array(z.number().int().nullable()),
      outputs: z.array(z.number().int()),
      attrs: z.record(z.string(), attr),
      scope: z.string().optional(),
    }),
  ),
  arena: z.object({
    bytes: z.number().int().nonnegative(),
    offsets: z.record(z.string(), z.number().int().nonnegative()),
  }),
});
export type EngineHeader = z.infer<typeof EngineHeader>;

export const BuildConfig = z.object({
  sm: z
    .number()
    .int()
    .refine((s) => s >= MIN_SM, {
      message: `the tsllm CUDA runtime needs sm ${MIN_SM} or newer (Ampere and later); such an engine could never load`,
      abort: true,
    })
    .refine((s) => (SUPPORTED_SMS as readonly number[]).includes(s), {
      message: `not a known GPU architecture (known: ${SUPPORTED_SMS.join(", ")})`,
    }),
  tp: z
    .number()
    .int()
    .refine((t) => [1, 2, 4, 8].includes(t), { message: "--tp must be 1, 2, 4 or 8" }),
  /**
   * Mixture-of-experts layers: the tp ranks form moe_ep_size groups of experts (expert parallelism),
   * each expert's intermediate dim split over the tp / moe_ep_size ranks of a group (TensorRT-LLM's
   * moe_ep_size × moe_tp_size = tp_size).
   */
  moe_ep_size: z.number().int().positive().default(1),
  dtype: z.enum(ENGINE_DTYPES),
  kv_cache_dtype: z.enum(["fp32", "fp16", "bf16", "fp8"]),
  quant: z.enum(["none", "fp8", "int8-wo", "int4-wo"]).default("none"),
  group_size: z.number().int().positive().default(128),
  max_batch_size: z.number().int().positive(),
  max_seq_len: z.number().int().positive(),
  max_num_tokens: z.number().int().positive(),
  tokens_per_block: z
    .number()
    .int()
    .positive()
    .refine((n) => (n & (n - 1)) === 0, { message: "--tokens-per-block must be a power of two" }),
  random_weights: z.boolean(),
  seed: z.number().int().nonnegative(),
  passes: z.array(z.string()).default([]),
});
export type BuildConfig = z.infer<typeof BuildConfig>;

export const EngineConfig = z.object({
  format_version: z.number().int(),
  model: z.record(z.string(), z.unknown()),
  facts: z.object({
    vocabSize: z.number().int(),
    numLayers: z.number().int(),
    numHeads: z.number().int(),
    numKvHeads: z.number().int(),
    headDim: z.number().int(),
    hiddenSize: z.number().int(),
    maxPositionEmbeddings: z.number().int(),
    eosTokenIds: z.array(z.number().int()),
  }),
  build: BuildConfig,
  ranks: z
    .array(
      z
        .object({
          file: z
            .string()
            .refine(isPlainFileName, { message: "must be a plain file name in the engine directory" }),
          bytes: z.number().int().nonnegative(),
          /**
           * src/engine/hash.ts: SHA-256 over the SHA-256 digests of the file's chunk_bytes chunks (16 MiB when
           * written). Chunks under 1 MiB are refused: each chunk costs a hash state and a digest in both loaders,
           * so a config.json saying 1 made a 1 MiB file cost 549 MB and 3.8 s to check (session 31).
           */
          hash: z
            .object({
              chunk_bytes: z
                .number()
                .int()
                .min(MIN_HASH_CHUNK_BYTES, {
                  message: `must be an integer of at least ${MIN_HASH_CHUNK_BYTES} bytes`,
                }),
              sha256: z.string(),
            })
            .optional(),
          /** Engines written before chunked hashes: SHA-256 of the whole file. */
          sha256: z.string().optional(),
        })
        .refine((r) => r.hash !== undefined || r.sha256 !== undefined, { message: "no content hash" }),
    )
    .min(1),
  /** Tokenizer files copied in by tsllm-compile (src/text/tokenizer.ts), plain names in this directory. */
  tokenizer: z
    .object({
      files: z.array(
        z.string().refine(isPlainFileName, { message: "must be a plain file name in the engine directory" }),
      ),
    })
    .optional(),
});
export type EngineConfig = z.infer<typeof EngineConfig>;

/**
 * A file name with no directory part, as an engine's config.json may name its files: never `..`, `/`,
 * `\` or an absolute path, so a tampered engine cannot make a loader open files outside its directory.
 */
export function isPlainFileName(name: string): boolean {
  return name.length <= 255 && /^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name);
}

export function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}
