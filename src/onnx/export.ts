// Graph → ONNX, one model per tensor-parallel rank: `rank{N}.onnx` with its weights as external data
// in `rank{N}.onnx.data` (streamed one weight at a time, 4 KiB aligned so runtimes can map them).
//
// Inputs and outputs follow Hugging Face's ONNX exports (batch 1):
//   input_ids, position_ids            int64 [1, sequence_length]
//   past_key_values.{L}.key / .value   [1, kv_heads, past_sequence_length, head_dim]
//   logits                             [1, sequence_length, vocab]
//   present.{L}.key / .value           [1, kv_heads, past_sequence_length + sequence_length, head_dim]
// position_ids must be past_sequence_length + 0, 1, …: token t attends to cache slots 0..position[t].
// Standard ops of opset 17, except that tp > 1 models meet at AllReduce / AllGather of ONNX Runtime's
// com.microsoft domain (its NCCL collectives).
import * as fs from "node:fs";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { fromFloat32 } from "../checkpoint/dtype.ts";
import type { BuildConfig } from "../engine/format.ts";
import { alignUp, valueDtypeOf } from "../engine/format.ts";
import { isRandomStored, rankWeightSeed } from "../engine/header.ts";
import { type Graph, numel, type Value } from "../ir/types.ts";
import { roundToDtype } from "../ops/round.ts";
import { materializeWeight, storageDtype } from "../weights/materialize.ts";
import { randomFill } from "../weights/random.ts";
import { ELEM, type Elem, OnnxBuilder, onnx, valueInfo } from "./builder.ts";
import { LOWERINGS, type LowerCtx } from "./lower.ts";

export const ONNX_OPSET = 17;
const DATA_ALIGN = 4096;

const ELEM_OF: Record<string, Elem> = { f32: ELEM.f32, f16: ELEM.f16, bf16: ELEM.bf16 };

export interface OnnxRankOptions {
  graph: Graph;
  rank: number;
  build: BuildConfig;
  checkpoint: Checkpoint | null;
  /** Path of the external data file to write, and its name as the model refers to it. */
  dataPath: string;
  dataName: string;
  metadata?: Record<string, string>;
}

/** Lowers one rank's graph; writes its weights to `dataPath`; returns the serialised ModelProto. */
export function exportOnnxRank(o: OnnxRankOptions): Uint8Array {
  const g = o.graph;
  const act = ELEM_OF[valueDtypeOf(o.build.dtype)];
  const b = new OnnxBuilder();
  const names = new Map<number, string>();
  const used = new Set<string>();
  const fd = fs.openSync(o.dataPath, "w");
  let dataBytes = 0;

  const declareWeight = (v: Value): string => {
    const bytes = weightBytes(v, o);
    // A name taken by another weight gets the value id, then a counter (a weight may itself be called "w.3").
    let name = v.name;
    for (let k = 0; used.has(name); k++) name = k === 0 ? `${v.name}.${v.id}` : `${v.name}.${v.id}.${k}`;
    used.add(name);
    const off = alignUp(dataBytes, DATA_ALIGN);
    if (off > dataBytes) fs.writeSync(fd, new Uint8Array(off - dataBytes), 0, off - dataBytes, dataBytes);
    let w = 0;
    while (w < bytes.length) w += fs.writeSync(fd, bytes, w, bytes.length - w, off + w);
    dataBytes = off + bytes.length;
    b.initializers.push({
      name,
      dims: v.shape.map(Number),
      dataType: ELEM_OF[v.dtype],
      dataLocation: onnx.TensorProto.DataLocation.EXTERNAL,
      externalData: [
        { key: "location", value: o.dataName },
        { key: "offset", value: String(off) },
        { key: "length", value: String(bytes.length) },
      ],
    });
    b.elems.set(name, ELEM_OF[v.dtype]);
    return name;
  };

  try {
    const seq = "sequence_length";
    const inputs = [
      valueInfo("input_ids", ELEM.i64, [1, seq]),
      valueInfo("position_ids", ELEM.i64, [1, seq]),
    ];
    b.elems.set("input_ids", ELEM.i64);
    b.elems.set("position_ids", ELEM.i64);
    const ids = b.op1("Reshape", ["input_ids", b.i64([-1])]);
    const positions = b.op1("Reshape", ["position_ids", b.i64([-1])]);
    names.set(g.inputs.input_ids, ids);
    names.set(g.inputs.positions, positions);

    const kvHeads = g.meta.numKvHeads;
    const D = g.meta.headDim;
    const kvOutputs: ReturnType<typeof valueInfo>[] = [];
    const kvLayers = new Map<number, ReturnType<LowerCtx["kv"]>>();
    const cosSinCache = new Map<string, { cos: string; sin: string }>();

    const c: LowerCtx = {
      b,
      act,
      tp: o.build.tp,
      name(id) {
        const n = names.get(id);
        if (n !== undefined) return n;
        const v = g.values.get(id);
        if (v?.kind !== "weight") throw new Error(`ONNX export: value %${id} used before it is defined`);
        const w = declareWeight(v);
        names.set(id, w);
        return w;
      },
      set(id, name) {
        names.set(id, name);
      },
      width(id) {
        const d = g.values.get(id)!.shape.at(-1);
        if (typeof d !== "number") throw new Error(`ONNX export: %${id} has no static width`);
        return d;
      },
      positions: () => positions,
      kv(layer) {
        let kv = kvLayers.get(layer);
        if (!kv) {
          kv = {
            pastKey: `past_key_values.${layer}.key`,
            pastValue: `past_key_values.${layer}.value`,
            presentKey: `present.${layer}.key`,
            presentValue: `present.${layer}.value`,
          };
          for (const n of [kv.pastKey, kv.pastValue]) {
            inputs.push(valueInfo(n, act, [1, kvHeads, "past_sequence_length", D]));
            b.elems.set(n, act);
          }
          for (const n of [kv.presentKey, kv.presentValue])
            kvOutputs.push(valueInfo(n, act, [1, kvHeads, "total_sequence_length", D]));
          kvLayers.set(layer, kv);
        }
        return kv;
      },
      cosSin(invFreq, pos) {
        const key = `${invFreq}`;
        let cs = cosSinCache.get(key);
        if (!cs) {
          const p = b.op1("Unsqueeze", [
            b.op1("Cast", [c.name(pos)], { to: { i: ELEM.f32 } }, ELEM.f32),
            b.i64([1]),
          ]);
          const ang = b.op1("Mul", [p, b.op1("Unsqueeze", [c.name(invFreq), b.i64([0])])]);
          const cast = (x: string) => (act === ELEM.f32 ? x : b.op1("Cast", [x], { to: { i: act } }, act));
          cs = { cos: cast(b.op1("Cos", [ang])), sin: cast(b.op1("Sin", [ang])) };
          cosSinCache.set(key, cs);
        }
        return cs;
      },
    };

    for (const n of g.nodes) {
      const lower = LOWERINGS[n.op];
      if (!lower)
        throw new Error(
          `ONNX export: no standard-ONNX lowering for op "${n.op}"${n.op === "quant_linear" ? " (export with --quant none)" : ""}`,
        );
      lower(c, n);
    }
    const vocab = g.values.get(g.outputs.logits)!.shape.at(-1) as number;
    b.op("Unsqueeze", [c.name(g.outputs.logits), b.i64([0])], {}, { names: ["logits"], elem: act });
    const outputs = [valueInfo("logits", act, [1, seq, vocab]), ...kvOutputs];
    const skip = new Set([...inputs, ...outputs].map((v) => v.name!));
    for (const t of b.initializers) skip.add(t.name!);
    const model: Parameters<typeof onnx.ModelProto.encode>[0] = {
      irVersion: 8,
      producerName: "tsllm",
      producerVersion: "1",
      opsetImport: [
        { domain: "", version: ONNX_OPSET },
        ...[...b.domains].map((domain) => ({ domain, version: 1 })),
      ],
      metadataProps: Object.entries(o.metadata ?? {}).map(([key, value]) => ({ key, value })),
      graph: {
        name: `tsllm_rank${o.rank}`,
        node: b.nodes,
        initializer: b.initializers,
        input: inputs,
        output: outputs,
        valueInfo: [...b.elems].filter(([n]) => !skip.has(n)).map(([n, e]) => valueInfo(n, e)),
      },
    };
    return onnx.ModelProto.encode(model).finish();
  } finally {
    fs.closeSync(fd);
  }
}

function weightBytes(v: Value, o: OnnxRankOptions): Uint8Array {
  if (!isRandomStored(v, o.build)) return materializeWeight(v, o.checkpoint);
  if (v.recipe?.kind !== "checkpoint") throw new Error(`${v.name}: not a checkpoint weight`);
  const data = randomFill(
    numel(v.shape),
    rankWeightSeed(o.build, o.rank, v.name),
    v.recipe.init.mean,
    v.recipe.init.scale,
  );
  roundToDtype(data, v.dtype);
  return fromFloat32(storageDtype(v.dtype), data);
}
