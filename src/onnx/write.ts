// `tsllm-compile --emit onnx`: an ONNX directory instead of an engine — rank{N}.onnx + rank{N}.onnx.data
// per rank and onnx.json (model and build config, the I/O contract). Built in a temporary directory and
// moved into place when complete, like engines (src/engine/output-dir.ts).
import * as fs from "node:fs";
import * as path from "node:path";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import type { ModelFacts } from "../dsl/model.ts";
import type { BuildConfig } from "../engine/format.ts";
import { OutputDir, yieldToSignals } from "../engine/output-dir.ts";
import { namingWriteErrors } from "../fs-atomic.ts";
import type { Graph } from "../ir/types.ts";
import { exportOnnxRank, ONNX_OPSET } from "./export.ts";

export interface WriteOnnxOptions {
  outDir: string;
  force?: boolean;
  inputs?: string[];
  ranks: Graph[];
  build: BuildConfig;
  model: Record<string, unknown>;
  facts: ModelFacts;
  checkpoint: Checkpoint | null;
}

export interface OnnxDirConfig {
  format: "tsllm-onnx";
  opset: number;
  tp: number;
  ranks: { file: string; data: string; bytes: number; data_bytes: number }[];
  inputs: string[];
  outputs: string[];
  num_layers: number;
  kv_heads_per_rank: number;
  head_dim: number;
  model: Record<string, unknown>;
  facts: ModelFacts;
  build: BuildConfig;
}

export async function writeOnnx(o: WriteOnnxOptions): Promise<OnnxDirConfig> {
  const out = new OutputDir(o.outDir, { force: o.force, inputs: o.inputs });
  const tmp = out.tmp;
  try {
    const ranks: OnnxDirConfig["ranks"] = [];
    for (const [rank, graph] of o.ranks.entries()) {
      await yieldToSignals();
      const file = `rank${rank}.onnx`;
      const data = `${file}.data`;
      const bytes = namingWriteErrors(path.join(tmp, data), () =>
        exportOnnxRank({
          graph,
          rank,
          build: o.build,
          checkpoint: o.checkpoint,
          dataPath: path.join(tmp, data),
          dataName: data,
          metadata: {
            tsllm_rank: String(rank),
            tsllm_tp: String(o.build.tp),
            architecture: String(o.model.architecture ?? ""),
          },
        }),
      );
      namingWriteErrors(path.join(tmp, file), () => fs.writeFileSync(path.join(tmp, file), bytes));
      ranks.push({ file, data, bytes: bytes.length, data_bytes: fs.statSync(path.join(tmp, data)).size });
    }
    // A rank's export is synchronous: a SIGINT that came during the last one is only delivered at a yield. Without
    // this one it waited until after commit(), so an interrupted export replaced the old one and exited 0.
    await yieldToSignals();
    const g = o.ranks[0];
    const L = g.meta.numLayers;
    const kv = (p: string) =>
      Array.from({ length: L }, (_, l) => [`${p}.${l}.key`, `${p}.${l}.value`]).flat();
    const config: OnnxDirConfig = {
      format: "tsllm-onnx",
      opset: ONNX_OPSET,
      tp: o.build.tp,
      ranks,
      inputs: ["input_ids", "position_ids", ...kv("past_key_values")],
      outputs: ["logits", ...kv("present")],
      num_layers: L,
      kv_heads_per_rank: g.meta.numKvHeads,
      head_dim: g.meta.headDim,
      model: o.model,
      facts: o.facts,
      build: o.build,
    };
    const json = path.join(tmp, "onnx.json");
    namingWriteErrors(json, () => fs.writeFileSync(json, `${JSON.stringify(config, null, 2)}\n`));
    out.commit();
    return config;
  } finally {
    out.discard();
  }
}
