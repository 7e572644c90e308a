/**
 * Hugging Face `config.json` → typed, normalised model configs.
 *
 * Accepts both the transformers-4 form (top-level `rope_theta`, `rope_scaling`)
 * and the transformers-5 form (`rope_parameters`). Unknown extra fields are
 * ignored (configs carry many training-only keys); fields we rely on are
 * validated, and every error is one line naming the file and the field.
 */
import * as fs from "node:fs";
import * as nodePath from "node:path";
import { z } from "zod";
import { ConfigError } from "./errors.ts";

export const SUPPORTED_ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "GPTJForCausalLM"] as const;
export type SupportedArchitecture = (typeof SUPPORTED_ARCHITECTURES)[number];
const SUPPORTED_ROPE_TYPES = ["default", "linear", "llama3"];

export type RopeScaling =
  | null
  | {
      type: "llama3";
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  | { type: "linear"; factor: number };

export interface LlamaConfig {
  architecture: "LlamaForCausalLM" | "MistralForCausalLM";
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  attentionBias: boolean;
  mlpBias: boolean;
  tieWordEmbeddings: boolean;
  hiddenAct: "silu";
  /** Mistral sliding-window attention span; absent when the config has none (null). */
  slidingWindow?: number;
  torchDtype?: string;
  eosTokenId?: number[];
  bosTokenId?: number;
}

export interface GptjConfig {
  architecture: "GPTJForCausalLM";
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  headDim: number;
  /** Leading dims of each head that get (interleaved) rotary embedding. */
  rotaryDim: number;
  intermediateSize: number;
  layerNormEps: number;
  maxPositionEmbeddings: number;
  activation: "gelu_new";
  tieWordEmbeddings: boolean;
  torchDtype?: string;
  eosTokenId?: number[];
  bosTokenId?: number;
}

export type HfModelConfig = LlamaConfig | GptjConfig;

const posInt = z.number().int().positive();
const posNum = z.number().positive();
const tokenId = z.number().int().nonnegative();
const common = {
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
});

const llamaSchema = z.looseObject({
  ...common,
  hidden_size: posInt,
  intermediate_size: posInt,
  num_hidden_layers: posInt,
  num_attention_heads: posInt,
  num_key_value_heads: posInt.nullable().optional(),
  head_dim: posInt.nullable().optional(),
  rms_norm_eps: posNum,
  max_position_embeddings: posInt,
  rope_theta: posNum.optional(),
  rope_scaling: ropeSchema.nullable().optional(),
  rope_parameters: ropeSchema.nullable().optional(),
  attention_bias: z.boolean().optional(),
  mlp_bias: z.boolean().optional(),
  hidden_act: z.literal("silu").optional(),
  sliding_window: posInt.nullable().optional(),
});

const gptjSchema = z.looseObject({
  ...common,
  n_embd: posInt,
  n_layer: posInt,
  n_head: posInt,
  n_inner: posInt.nullable().optional(),
  rotary_dim: posInt.nullable().optional(),
  layer_norm_epsilon: posNum,
  n_positions: posInt,
  activation_function: z.literal("gelu_new").optional(),
});

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

function parseWith<T extends z.ZodType>(schema: T, json: unknown, source: string): z.infer<T> {
  const r = schema.safeParse(json);
  if (!r.success) throw issueError(source, json, r.error.issues[0]);
  return r.data;
}

function commonFields(raw: z.infer<typeof llamaSchema> | z.infer<typeof gptjSchema>) {
  const out: { torchDtype?: string; eosTokenId?: number[]; bosTokenId?: number } = {};
  const dtype = raw.torch_dtype ?? raw.dtype;
  if (dtype != null) out.torchDtype = dtype;
  if (raw.eos_token_id != null) {
    out.eosTokenId = Array.isArray(raw.eos_token_id) ? [...raw.eos_token_id] : [raw.eos_token_id];
  }
  if (raw.bos_token_id != null) out.bosTokenId = raw.bos_token_id;
  return out;
}

/** Both config generations → (theta, scaling). transformers 5 keeps both in `rope_parameters`. */
function resolveRope(
  raw: z.infer<typeof llamaSchema>,
  source: string,
): { theta: number; scaling: RopeScaling } {
  const params = raw.rope_parameters ?? undefined;
  const field = params ? "rope_parameters" : "rope_scaling";
  const rope = params ?? raw.rope_scaling ?? undefined;
  const theta = params?.rope_theta ?? raw.rope_theta ?? 10000;
  if (!rope) return { theta, scaling: null };
  const type = rope.rope_type ?? rope.type ?? (params ? "default" : undefined);
  if (type === undefined)
    throw new ConfigError(source, `missing required field "${field}.rope_type"`, `${field}.rope_type`);
  const need = (
    key: "factor" | "low_freq_factor" | "high_freq_factor" | "original_max_position_embeddings",
  ) => {
    const v = rope[key];
    if (v === undefined) {
      throw new ConfigError(
        source,
        `missing required field "${field}.${key}" (rope_type "${type}")`,
        `${field}.${key}`,
      );
    }
    return v;
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
    default:
      throw new ConfigError(
        source,
        `unsupported rope_type "${type}" in "${field}" (supported: ${SUPPORTED_ROPE_TYPES.join(", ")})`,
        `${field}.rope_type`,
      );
  }
}

function parseLlama(json: unknown, source: string, architecture: LlamaConfig["architecture"]): LlamaConfig {
  const raw = parseWith(llamaSchema, json, source);
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
  const { theta, scaling } = resolveRope(raw, source);
  const cfg: LlamaConfig = {
    architecture,
    vocabSize: raw.vocab_size,
    hiddenSize: raw.hidden_size,
    intermediateSize: raw.intermediate_size,
    numLayers: raw.num_hidden_layers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps: raw.rms_norm_eps,
    ropeTheta: theta,
    ropeScaling: scaling,
    maxPositionEmbeddings: raw.max_position_embeddings,
    attentionBias: raw.attention_bias ?? false,
    mlpBias: raw.mlp_bias ?? false,
    tieWordEmbeddings: raw.tie_word_embeddings ?? false,
    hiddenAct: "silu",
    ...commonFields(raw),
  };
  if (raw.sliding_window != null) cfg.slidingWindow = raw.sliding_window;
  return cfg;
}

/** transformers' GPTJConfig default for an absent rotary_dim (an explicit null means the whole head). */
const GPTJ_DEFAULT_ROTARY_DIM = 64;

function parseGptj(json: unknown, source: string): GptjConfig {
  const raw = parseWith(gptjSchema, json, source);
  if (raw.n_embd % raw.n_head !== 0) {
    throw new ConfigError(
      source,
      `"n_embd" (${raw.n_embd}) is not divisible by "n_head" (${raw.n_head})`,
      "n_embd",
    );
  }
  const headDim = raw.n_embd / raw.n_head;
  const rotaryDim = raw.rotary_dim === null ? headDim : (raw.rotary_dim ?? GPTJ_DEFAULT_ROTARY_DIM);
  if (rotaryDim > headDim || rotaryDim % 2 !== 0) {
    throw new ConfigError(
      source,
      `"rotary_dim" (${rotaryDim}) must be even and at most the head dim (${headDim})`,
      "rotary_dim",
    );
  }
  return {
    architecture: "GPTJForCausalLM",
    vocabSize: raw.vocab_size,
    hiddenSize: raw.n_embd,
    numLayers: raw.n_layer,
    numHeads: raw.n_head,
    headDim,
    rotaryDim,
    intermediateSize: raw.n_inner ?? 4 * raw.n_embd,
    layerNormEps: raw.layer_norm_epsilon,
    maxPositionEmbeddings: raw.n_positions,
    activation: "gelu_new",
    tieWordEmbeddings: raw.tie_word_embeddings ?? false,
    ...commonFields(raw),
  };
}

/** Validate and normalise a parsed config.json. `source` names the file in errors. */
export function parseHfConfig(json: unknown, source: string): HfModelConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new ConfigError(source, "config is not a JSON object");
  }
  const supported = `(supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`;
  const archs = (json as { architectures?: unknown }).architectures;
  if (!Array.isArray(archs) || archs.length === 0 || typeof archs[0] !== "string") {
    throw new ConfigError(
      source,
      `unsupported architecture: missing "architectures" field ${supported}`,
      "architectures",
    );
  }
  const arch = archs[0];
  switch (arch) {
    case "LlamaForCausalLM":
    case "MistralForCausalLM":
      return parseLlama(json, source, arch);
    case "GPTJForCausalLM":
      return parseGptj(json, source);
    default:
      throw new ConfigError(source, `unsupported architecture ${show(arch)} ${supported}`, "architectures");
  }
}

/** Read and parse a config.json; `path` may also be the checkpoint directory holding it. */
export function loadHfConfig(path: string): HfModelConfig {
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
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, `not valid JSON: ${(e as Error).message}`);
  }
  return parseHfConfig(json, file);
}
