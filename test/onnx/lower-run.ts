// One node's ONNX lowering (src/onnx/lower.ts) run alone in ONNX Runtime: the graph wrapper the op-level ONNX
// tests share (test/onnx/lower.test.ts, test/onnx/elementwise.test.ts).
import * as ort from "onnxruntime-node";
import { expect } from "vitest";
import type { Attrs, Node } from "../../src/ir/types.ts";
import { ELEM, type Elem, OnnxBuilder, onnx, valueInfo } from "../../src/onnx/builder.ts";
import { LOWERINGS, type LowerCtx } from "../../src/onnx/lower.ts";
import type { HostTensor } from "../../src/ops/index.ts";

export interface Kv {
  layer: number;
  heads: number;
  D: number;
  /** Past key / value [1, heads, P, D] (P = length / (heads·D)). */
  pastKey: Float32Array;
  pastValue: Float32Array;
}

export interface LowerOpts {
  act?: Elem;
  tp?: number;
  /** The step's positions (attention's c.positions()). */
  positions?: number[];
  kv?: Kv;
  numOutputs?: number;
}

export interface Lowered {
  outs: Float32Array[];
  presentKey?: Float32Array;
  presentValue?: Float32Array;
  model: ReturnType<typeof onnx.ModelProto.decode>;
}

/**
 * Lowers one node (inputs are ids 0..n-1, outputs 100, 101, …) into a graph whose float inputs and outputs
 * are fp32 (cast to and from `act` around the node) and int inputs int64, and runs it in ONNX Runtime.
 */
export async function lowerRun(op: string, attrs: Attrs, inputs: (HostTensor | null)[], o: LowerOpts = {}) {
  const act = o.act ?? ELEM.f32;
  const b = new OnnxBuilder();
  const graphInputs: ReturnType<typeof valueInfo>[] = [];
  const feeds: Record<string, ort.Tensor> = {};
  const toAct = (x: string) => (act === ELEM.f32 ? x : b.op1("Cast", [x], { to: { i: act } }, act));
  const names = new Map<number, string>();
  const floatInput = (name: string, data: Float32Array, dims: number[]) => {
    graphInputs.push(valueInfo(name, ELEM.f32, dims));
    b.elems.set(name, ELEM.f32);
    feeds[name] = new ort.Tensor("float32", data, dims);
    return toAct(name);
  };
  const intInput = (name: string, data: Int32Array) => {
    graphInputs.push(valueInfo(name, ELEM.i64, [data.length]));
    b.elems.set(name, ELEM.i64);
    feeds[name] = new ort.Tensor("int64", BigInt64Array.from(Array.from(data, BigInt)), [data.length]);
    return name;
  };
  inputs.forEach((t, i) => {
    if (!t) return;
    names.set(
      i,
      t.data instanceof Int32Array ? intInput(`in${i}`, t.data) : floatInput(`in${i}`, t.f32, t.shape),
    );
  });
  const outputs = new Map<number, string>();
  let kvNames: ReturnType<LowerCtx["kv"]> | undefined;
  const c: LowerCtx = {
    b,
    act,
    tp: o.tp ?? 1,
    name: (id) => names.get(id) ?? outputs.get(id)!,
    set: (id, name) => outputs.set(id, name),
    width: (id) => inputs[id]!.cols,
    positions: () => intInput("positions", Int32Array.from(o.positions!)),
    kv(layer) {
      const kv = o.kv!;
      expect(layer).toBe(kv.layer);
      const dims = (a: Float32Array) => [1, kv.heads, a.length / (kv.heads * kv.D), kv.D];
      kvNames = {
        pastKey: floatInput("past_key", kv.pastKey, dims(kv.pastKey)),
        pastValue: floatInput("past_value", kv.pastValue, dims(kv.pastValue)),
        presentKey: "present_key",
        presentValue: "present_value",
      };
      return kvNames;
    },
    // As src/onnx/export.ts: angles = positions ⊗ inv_freq, in fp32, cos / sin cast to the activation type.
    cosSin(invFreq, pos) {
      const p = b.op1("Unsqueeze", [
        b.op1("Cast", [c.name(pos)], { to: { i: ELEM.f32 } }, ELEM.f32),
        b.i64([1]),
      ]);
      const f = inputs[invFreq]!;
      graphInputs.push(valueInfo("inv_freq", ELEM.f32, f.shape));
      feeds.inv_freq = new ort.Tensor("float32", f.f32, f.shape);
      const ang = b.op1("Mul", [p, b.op1("Unsqueeze", ["inv_freq", b.i64([0])])]);
      return { cos: toAct(b.op1("Cos", [ang])), sin: toAct(b.op1("Sin", [ang])) };
    },
  };
  const node: Node = {
    op,
    inputs: inputs.map((t, i) => (t ? i : null)) as number[],
    outputs: Array.from({ length: o.numOutputs ?? 1 }, (_, j) => 100 + j),
    attrs,
  };
  LOWERINGS[op](c, node);
  const toF32 = (x: string, name: string) =>
    b.op("Cast", [x], { to: { i: ELEM.f32 } }, { names: [name], elem: ELEM.f32 });
  const outNames = node.outputs.map((id, j) => {
    toF32(outputs.get(id)!, `out${j}`);
    return `out${j}`;
  });
  if (kvNames) {
    toF32(kvNames.presentKey, "present_key_f32");
    toF32(kvNames.presentValue, "present_value_f32");
    outNames.push("present_key_f32", "present_value_f32");
  }
  const m = onnx.ModelProto.create({
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    graph: {
      name: op,
      node: b.nodes,
      initializer: b.initializers,
      input: graphInputs,
      output: outNames.map((n) => valueInfo(n, ELEM.f32)),
    },
  });
  const sess = await ort.InferenceSession.create(onnx.ModelProto.encode(m).finish());
  const res = await sess.run(feeds);
  const out: Lowered = {
    outs: node.outputs.map((_, j) => res[`out${j}`].data as Float32Array),
    model: m,
  };
  if (kvNames) {
    out.presentKey = res.present_key_f32.data as Float32Array;
    out.presentValue = res.present_value_f32.data as Float32Array;
  }
  return out;
}
