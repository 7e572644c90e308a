// A model file's default export: which Hugging Face architectures it implements, how to read their
// config (the model's own schema and normalisation), a small default config for checkpoint-free
// builds, and the forward graph.
import type { Module } from "./module.ts";

/**
 * The normalised fields the runtime needs from every model's config (the engine's facts). A model's
 * own config type extends this with whatever its forward() reads.
 */
export interface BaseConfig {
  vocabSize: number;
  numLayers: number;
  numHeads: number;
  /** KV heads (default: numHeads). */
  numKvHeads?: number;
  headDim: number;
  hiddenSize: number;
  maxPositionEmbeddings: number;
  eosTokenId?: number[];
  /** Sliding-window attention span, when the model uses one (caps max_seq_len: no windowed kernel). */
  slidingWindow?: number;
}

export interface ModelDef<C extends BaseConfig = BaseConfig> {
  /** Hugging Face `architectures` entries this file implements. */
  architectures: string[];
  /** Parses (and validates) a Hugging Face config.json; `source` names the file for errors. */
  parseConfig(json: unknown, source: string): C;
  /** A tiny config in Hugging Face form, built with random weights when no checkpoint or config is given. */
  defaultConfig: Record<string, unknown>;
  /** Builds the forward graph of one step over packed tokens. */
  forward(m: Module, cfg: C): void;
}

export interface ModelFacts {
  vocabSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  hiddenSize: number;
  maxPositionEmbeddings: number;
  eosTokenIds: number[];
}

export function defineModel<C extends BaseConfig>(def: ModelDef<C>): ModelDef<C> {
  return def;
}

/** The engine's facts from a parsed config; checked at run time too (model files may be JavaScript). */
export function modelFacts(cfg: BaseConfig): ModelFacts {
  // A JavaScript parseConfig may return nothing at all: say so rather than "cannot read properties of null".
  if (typeof cfg !== "object" || cfg === null || Array.isArray(cfg))
    throw new Error(
      `the model's parseConfig() returned ${Array.isArray(cfg) ? "an array" : String(cfg)}, not a config object`,
    );
  for (const k of [
    "vocabSize",
    "numLayers",
    "numHeads",
    "headDim",
    "hiddenSize",
    "maxPositionEmbeddings",
  ] as const)
    if (typeof cfg[k] !== "number")
      throw new Error(
        `the model's parseConfig() returned no numeric "${k}" (every model config has the BaseConfig fields)`,
      );
    // A JavaScript model file (or a parseConfig that divides) can hand back NaN or a fraction, which would build an
    // engine of nonsense shapes.
    else if (!Number.isInteger(cfg[k]) || cfg[k] < 1)
      throw new Error(`the model's parseConfig() returned "${k}" = ${cfg[k]}: not a positive integer`);
  if (cfg.numKvHeads !== undefined && !(Number.isInteger(cfg.numKvHeads) && cfg.numKvHeads >= 1))
    throw new Error(
      `the model's parseConfig() returned "numKvHeads" = ${cfg.numKvHeads}: not a positive integer`,
    );
  return {
    vocabSize: cfg.vocabSize,
    numLayers: cfg.numLayers,
    numHeads: cfg.numHeads,
    numKvHeads: cfg.numKvHeads ?? cfg.numHeads,
    headDim: cfg.headDim,
    hiddenSize: cfg.hiddenSize,
    maxPositionEmbeddings: cfg.maxPositionEmbeddings,
    eosTokenIds: cfg.eosTokenId ?? [],
  };
}
