// The public entry (`import … from "tsllm"`): everything a model file uses, bundled or written
// anywhere else. A model file needs nothing but this module (zod is re-exported for config schemas).
export { z } from "zod";
export { ConfigError } from "../checkpoint/errors.ts";
export {
  type CommonConfig,
  commonConfig,
  type DecoderConfig,
  decoderConfig,
  decoderFields,
  hfCommonFields,
  hfRopeFields,
  parseConfigJson,
  type RopeScaling,
  ropeParameters,
} from "../checkpoint/hf-config.ts";
export {
  ACTIVATIONS,
  type ActivationName,
  type AttentionOptions,
  causalLM,
  gatedMlp,
  type Layer,
  type LlamaStyleConfig,
  llamaDecoderLayer,
  llamaStyleLM,
  type MlpOptions,
  mlp,
  parallelDecoderLayer,
  preNormDecoderLayer,
  type SparseMoeOptions,
  selfAttention,
  sparseMoe,
  stack,
} from "./layers.ts";
export { type BaseConfig, defineModel, type ModelDef, type ModelFacts } from "./model.ts";
export { Module, type NormOptions, type Parallel, type RopeOptions } from "./module.ts";
export { Tensor } from "./tensor.ts";
