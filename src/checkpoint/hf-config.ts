/**
 * Shared pieces for reading Hugging Face `config.json` files. Each model file owns its config (zod
 * schema of the JSON + normalisation to a typed config, next to the model, as MLC-LLM's LlamaConfig
 * lives in llama_model.py); what they have in common lives here:
 *
 * - `parseConfigJson`: zod → one-line ConfigError naming the file and the field;
 * - the fields every causal LM config has (`hfCommonFields` / `commonConfig`: vocab, tied embeddings,
 *   dtype, eos/bos), the transformer-decoder fields (`decoderFields` / `decoderConfig`: widths,
 *   heads, RoPE) with their consistency checks;
 * - RoPE parameters in both generations: the transformers-4 form (top-level `rope_theta`,
 *   `rope_scaling`) and the transformers-5 form (`rope_parameters`).
 *
 * Unknown extra fields are ignored (configs carry many training-only keys).
 */
import * as fs from "node:fs";
import * as nodePath from "node:path";
import { z } from "zod";
import { ConfigError } from "./errors.ts";

export const SUPPORTED_ROPE_TYPES = ["default", "linear", "llama3", "yarn", "dynamic"] as const;

export type RopeScaling =
  | null
  | {
      type: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | { type: "linear"; factor: number }
  | {
      /** YaRN (Peng et al. 2023), as transformers' _compute_yarn_parameters. */
      type: "yarn";
      factor: number;
      originalMaxPositionEmbeddings: number;
      betaFast: number;
      betaSlow: number;
      /** Scales cos/sin (softmax temperature); null: 0.1·mscale·ln(factor) + 1. */
      attentionFactor: number | null;
      mscale: number | null;
      mscaleAllDim: number | null;
      truncate: boolean;
    }
  | {
      /**
       * Dynamic NTK: theta grows with the sequence length beyond the original context. The engine
       * stores one inv_freq table, so it is computed for `seqLen` (the build's max_seq_len): exact for
       * sequences that long, as transformers' dynamic_rope_update at that length.
       */
      type: "dynamic";
      factor: number;
      originalMaxPositionEmbeddings: number;
    };

const posInt = z.number().int().positive();
const posNum = z.number().positive();
const tokenId = z.number().int().nonnegative();

/** Fields every causal LM config.json may carry. */
export const hfCommonFields = {
  vocab_size: posInt,
  tie_word_embeddings: z.boolean().optional(),
  torch_dtype: z.string().nullable().optional(),
  dtype: z.string().nullable().optional(), // transformers 5 renamed torch_dtype
  eos_token_id: z
    .union([tokenId, z.array(tokenId)])
    .nullable()
    .optional(),
  bos_token_id: tokenId.nullable().optional(),
};

const ropeSchema = z.looseObject({
  rope_type: z.string().optional(),
  type: z.string().optional(), // older transformers-4 spelling of rope_type
  rope_theta: posNum.optional(),
  factor: posNum.optional(),
  low_freq_factor: posNum.optional(),
  high_freq_factor: posNum.optional(),
  original_max_position_embeddings: posInt.optional(),
  beta_fast: posNum.optional(),
  beta_slow: posNum.optional(),
  attention_factor: posNum.nullable().optional(),
  mscale: z.number().nullable().optional(),
  mscale_all_dim: z.number().nullable().optional(),
  truncate: z.boolean().optional(),
});

/** RoPE fields in both generations (transformers 4: rope_theta + rope_scaling; 5: rope_parameters). */
export const hfRopeFields = {
  rope_theta: posNum.optional(),
  rope_scaling: ropeSchema.nullable().optional(),
  rope_parameters: ropeSchema.nullable().optional(),
};

/** The widths and heads of a transformer decoder in Llama's naming (Llama, Mistral, Qwen2, Mixtral…). */
export const decoderFields = {
  ...hfCommonFields,
  ...hfRopeFields,
  hidden_size: posInt,
  intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  num_key_value_heads: posInt.nullable().optional(),
  head_dim: posInt.nullable().optional(),
  max_position_embeddings: posInt,
};

const commonSchema = z.looseObject(hfCommonFields);
const decoderSchema = z.looseObject(decoderFields);
type RopeRaw = z.infer<z.ZodObject<typeof hfRopeFields>>;

function valueAt(json: unknown, path: PropertyKey[]): unknown {
  let v = json;
  for (const k of path) {
    if (typeof v !== "object" || v === null) return undefined;
    v = (v as Record<PropertyKey, unknown>)[k];
  }
  return v;
}

function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/** One zod issue → one-line ConfigError naming the file and field. */
function issueError(source: string, json: unknown, issue: z.core.$ZodIssue): ConfigError {
  const field = issue.path.map(String).join(".");
  const value = valueAt(json, issue.path);
  if (value === undefined) return new ConfigError(source, `missing required field "${field}"`, field);
  if (issue.code === "invalid_value") {
    const allowed = issue.values.map((x) => show(x)).join(", ");
    return new ConfigError(source, `unsupported ${field} ${show(value)} (supported: ${allowed})`, field);
  }
  return new ConfigError(source, `invalid field "${field}": ${issue.message} (got ${show(value)})`, field);
}

/** Validates a config.json against a model's zod schema; the first problem becomes a one-line ConfigError. */
export function parseConfigJson<T extends z.ZodType>(schema: T, json: unknown, source: string): z.infer<T> {
  if (typeof json !== "object" || json === null || Array.isArray(json))
    throw new ConfigError(source, "config is not a JSON object");
  const r = schema.safeParse(json);
  if (!r.success) throw issueError(source, json, r.error.issues[0]);
  return r.data;
}

/** The normalised fields every model config carries (and the engine's facts read). */
export interface CommonConfig {
  vocabSize: number;
  tieWordEmbeddings: boolean;
  torchDtype?: string;
  eosTokenId?: number[];
  bosTokenId?: number;
}

export function commonConfig(raw: z.infer<typeof commonSchema>): CommonConfig {
  const out: CommonConfig = {
    vocabSize: raw.vocab_size,
    tieWordEmbeddings: raw.tie_word_embeddings ?? false,
  };
  const dtype = raw.torch_dtype ?? raw.dtype;
  if (dtype != null) out.torchDtype = dtype;
  if (raw.eos_token_id != null)
    out.eosTokenId = Array.isArray(raw.eos_token_id) ? [...raw.eos_token_id] : [raw.eos_token_id];
  if (raw.bos_token_id != null) out.bosTokenId = raw.bos_token_id;
  return out;
}

/** A transformer decoder's normalised geometry and RoPE (see decoderFields). */
export interface DecoderConfig extends CommonConfig {
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
}

/** decoderFields → DecoderConfig, checking that heads divide and the head dim suits RoPE. */
export function decoderConfig(
  raw: z.infer<typeof decoderSchema>,
  source: string,
  /** The model's rope_theta when the config names none (transformers' per-model default: Mixtral's is 1e6). */
  defaultRopeTheta = 10000,
): DecoderConfig {
  const numHeads = raw.num_attention_heads;
  const numKvHeads = raw.num_key_value_heads ?? numHeads;
  if (raw.head_dim == null && raw.hidden_size % numHeads !== 0) {
    throw new ConfigError(
      source,
      `"hidden_size" (${raw.hidden_size}) is not divisible by "num_attention_heads" (${numHeads}) and no "head_dim" is given`,
      "hidden_size",
    );
  }
  const headDim = raw.head_dim ?? raw.hidden_size / numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new ConfigError(
      source,
      `"num_attention_heads" (${numHeads}) is not divisible by "num_key_value_heads" (${numKvHeads})`,
      "num_key_value_heads",
    );
  }
  if (headDim % 2 !== 0)
    throw new ConfigError(source, `head dim ${headDim} must be even for RoPE`, "head_dim");
  const { theta, scaling } = ropeParameters(raw, source, raw.max_position_embeddings, defaultRopeTheta);
  const common = commonConfig(raw);
  return {
    hiddenSize: raw.hidden_size,
    intermediateSize: raw.intermediate_size,
    numLayers: raw.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim,
    ropeTheta: theta,
    ropeScaling: scaling,
    maxPositionEmbeddings: raw.max_position_embeddings,
    ...common,
  };
}

/** Both config generations → (theta, scaling). transformers 5 keeps both in `rope_parameters`. */
export function ropeParameters(
  raw: RopeRaw,
  source: string,
  /** The config's max_position_embeddings (YaRN's and dynamic NTK's defaults derive from it). */
  maxPositionEmbeddings?: number,
  /** rope_theta when neither generation names one (the model config class's default). */
  defaultTheta = 10000,
): { theta: number; scaling: RopeScaling } {
  const params = raw.rope_parameters ?? undefined;
  const field = params ? "rope_parameters" : "rope_scaling";
  const rope = params ?? raw.rope_scaling ?? undefined;
  const theta = params?.rope_theta ?? raw.rope_theta ?? defaultTheta;
  if (!rope) return { theta, scaling: null };
  const type = rope.rope_type ?? rope.type ?? (params ? "default" : undefined);
  if (type === undefined)
    throw new ConfigError(source, `missing required field "${field}.rope_type"`, `${field}.rope_type`);
  const need = <
    K extends "factor" | "low_freq_factor" | "high_freq_factor" | "original_max_position_embeddings",
  >(
    key: K,
  ): number => {
    const v = rope[key];
    if (v === undefined)
      throw new ConfigError(
        source,
        `missing required field "${field}.${key}" (rope_type "${type}")`,
        `${field}.${key}`,
      );
    return v;
  };
  const maxPos = () => {
    if (maxPositionEmbeddings === undefined)
      throw new ConfigError(
        source,
        `rope_type "${type}" needs "max_position_embeddings"`,
        "max_position_embeddings",
      );
    return maxPositionEmbeddings;
  };
  switch (type) {
    case "default":
      return { theta, scaling: null };
    case "linear":
      return { theta, scaling: { type: "linear", factor: need("factor") } };
    case "llama3":
      return {
        theta,
        scaling: {
          type: "llama3",
          factor: need("factor"),
          lowFreqFactor: need("low_freq_factor"),
          highFreqFactor: need("high_freq_factor"),
          originalMaxPositionEmbeddings: need("original_max_position_embeddings"),
        },
      };
    case "yarn": {
      const original = rope.original_max_position_embeddings ?? maxPos();
      return {
        theta,
        scaling: {
          type: "yarn",
          factor: rope.factor ?? maxPos() / original,
          originalMaxPositionEmbeddings: original,
          // transformers' defaults (modeling_rope_utils._compute_yarn_parameters).
          betaFast: rope.beta_fast ?? 32,
          betaSlow: rope.beta_slow ?? 1,
          attentionFactor: rope.attention_factor ?? null,
          mscale: rope.mscale ?? null,
          mscaleAllDim: rope.mscale_all_dim ?? null,
          truncate: rope.truncate ?? true,
        },
      };
    }
    case "dynamic":
      // transformers 5 stretches relative to max_position_embeddings (not an original_… field).
      return {
        theta,
        scaling: { type: "dynamic", factor: need("factor"), originalMaxPositionEmbeddings: maxPos() },
      };
    default:
      throw new ConfigError(
        source,
        `unsupported rope_type "${type}" in "${field}" (supported: ${SUPPORTED_ROPE_TYPES.join(", ")})`,
        `${field}.rope_type`,
      );
  }
}

/** The checkpoint dtype a config names (torch_dtype, or transformers 5's dtype), if any. */
export function configTorchDtype(json: unknown): string | undefined {
  const j = json as { torch_dtype?: unknown; dtype?: unknown } | null;
  const v = j?.torch_dtype ?? j?.dtype;
  return typeof v === "string" ? v : undefined;
}

/** The first `architectures` entry of a config.json, if it has one. */
export function configArchitecture(json: unknown): string | undefined {
  const a = (json as { architectures?: unknown } | null)?.architectures;
  return Array.isArray(a) && typeof a[0] === "string" ? a[0] : undefined;
}

/** Reads a config.json (or the one in a checkpoint directory) as JSON; errors name the file. */
export function readConfigJson(path: string): { json: unknown; file: string } {
  let file = path;
  try {
    if (fs.statSync(path).isDirectory()) file = nodePath.join(path, "config.json");
  } catch {
    // fall through: readFileSync below reports the missing file
  }
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    throw new ConfigError(file, `cannot read config: ${(e as Error).message}`);
  }
  try {
    return { json: JSON.parse(text), file };
  } catch (e) {
    // JSON.parse quotes the offending text, which may hold newlines: keep the message one line.
    throw new ConfigError(file, `not valid JSON: ${(e as Error).message.replace(/\s+/g, " ")}`);
  }
}
