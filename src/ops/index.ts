// Importing this module registers every op.
import "./embedding.ts";
import "./linear.ts";
import "./norm.ts";
import "./elementwise.ts";
import "./shape.ts";
import "./rope.ts";
import "./attention.ts";
import "./collective.ts";
import "./all-gather.ts";
import "./quant-linear.ts";
import "./moe.ts";

export * from "./registry.ts";
export { HostTensor } from "./tensor.ts";
