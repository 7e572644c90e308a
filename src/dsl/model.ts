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
  /** Facts the runtime needs (KV cache geometry, vocab, eos ids). */
  describe(cfg: C): ModelFacts;
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
