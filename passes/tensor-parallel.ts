// Tensor-parallel sharding: one graph per rank. (Sharding itself lands with issue 4.)
import type { BuildConfig } from "../src/engine/format.ts";
import type { Graph } from "../src/ir/types.ts";

export function shardForTp(g: Graph, build: BuildConfig): Graph[] {
  if (build.tp === 1) return [g];
  throw new Error(`--tp ${build.tp}: tensor-parallel sharding is not implemented yet`);
}
