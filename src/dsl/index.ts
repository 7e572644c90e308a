// Everything a model file imports.

export { type GptjConfig, type LlamaConfig, parseHfConfig } from "../checkpoint/hf-config.ts";
export { defineModel, type ModelDef, type ModelFacts } from "./model.ts";
export { Module, type Parallel, type RopeOptions } from "./module.ts";
export { Tensor } from "./tensor.ts";
