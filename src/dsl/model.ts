// A model file's default export: which Hugging Face architectures it implements, how to read their
// config, a small default config for checkpoint-free builds, and the forward graph.
import type { Module } from "./module.ts";

export interface ModelDef<C> {
  /** Hugging Face `architectures` entries this file implements. */
  architectures: string[];
  /** Parses (and validates) a Hugging Face config.json; `source` names the file for errors. */
  parseConfig(json: unknown, source: string): C;
  /** A tiny config in Hugging Face form, built with random weights when no checkpoint or config is given. */
  defaultConfig: Record<string, unknown>;
  /** Builds the forward graph of one step over packed tokens. */
  forward(m: Module, cfg: C): void;
  /**
   * Facts the runtime needs (vocab, heads, eos ids). Optional: by default they are read from the
   * normalised config's usual fields (vocabSize, numLayers, numHeads, numKvHeads ?? numHeads, …).
   */
  describe?(cfg: C): ModelFacts;
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

export function defineModel<C>(def: ModelDef<C>): ModelDef<C> {
  return def;
}

/** ModelFacts from a config with the usual normalised field names (src/checkpoint/hf-config.ts). */
export function modelFacts<C>(def: ModelDef<C>, cfg: C): ModelFacts {
  if (def.describe) return def.describe(cfg);
  const c = cfg as Record<string, unknown>;
  const num = (k: string, d?: number): number => {
    const v = c[k] ?? d;
    if (typeof v !== "number") throw new Error(`model config has no numeric "${k}"; give the model file a describe()`);
    return v;
  };
  return {
    vocabSize: num("vocabSize"),
    numLayers: num("numLayers"),
    numHeads: num("numHeads"),
    numKvHeads: num("numKvHeads", num("numHeads")),
    headDim: num("headDim"),
    hiddenSize: num("hiddenSize"),
    maxPositionEmbeddings: num("maxPositionEmbeddings"),
    eosTokenIds: Array.isArray(c.eosTokenId) ? (c.eosTokenId as number[]) : [],
  };
}
