// The pass pipeline, declared once, in the order the passes run on each rank's graph (after
// shardForTp has split the model graph into one graph per tensor-parallel rank).
import { addNormFusion } from "./add-norm-fusion.ts";
import { attentionFusion } from "./attention-fusion.ts";
import { cse } from "./cse.ts";
import { dce } from "./dce.ts";
import { epilogueFusion } from "./epilogue-fusion.ts";
import { gateUpFusion } from "./gate-up-fusion.ts";
import { memoryPlan } from "./memory-plan.ts";
import { normChainFusion } from "./norm-chain-fusion.ts";
import type { Pass } from "./pass.ts";
import { qkvFusion } from "./qkv-fusion.ts";
import { quantizeKvCache } from "./quantize-kv.ts";
import { quantizeWeights } from "./quantize-weights.ts";

export const PASSES: readonly Pass[] = [
  qkvFusion,
  gateUpFusion,
  attentionFusion,
  epilogueFusion,
  addNormFusion,
  normChainFusion,
  cse,
  dce,
  // Quantisation: after fusion (fused QKV / gate-up weights are quantised whole), before memory planning.
  { name: "quantize-weights", run: (g, ctx) => quantizeWeights(g, ctx.build) },
  { name: "quantize-kv", run: (g, ctx) => quantizeKvCache(g, ctx.build) },
  memoryPlan, // last: offsets are only valid for the graph it planned
];

export { type Pass, type PassContext, PassLog, passContext } from "./pass.ts";
export { runPasses } from "./run.ts";
export { shardForTp } from "./tensor-parallel.ts";
