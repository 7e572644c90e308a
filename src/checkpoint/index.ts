// The checkpoint layer: safetensors files, HF checkpoint directories, HF config.json.
export * from "./checkpoint.ts";
export * from "./dtype.ts";
export * from "./errors.ts";
export * from "./hf-config.ts";
export * from "./safetensors.ts";
