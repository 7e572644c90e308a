// A small ONNX graph builder over onnx-proto's message types: fresh names, nodes with typed
// attributes, small constants inline, and the element type of every value it creates (written as
// value_info, so tools can split the graph at collectives without shape inference).
import onnxProto from "onnx-proto";
import { f32ToBf16Bits, f32ToF16Bits } from "../checkpoint/dtype.ts";

export const { onnx } = onnxProto;
export type NodeProto = onnxProto.onnx.INodeProto;
export type TensorProto = onnxProto.onnx.ITensorProto;
export type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

/** TensorProto.DataType codes. */
export const ELEM = { f32: 1, u8: 2, i8: 3, i32: 6, i64: 7, bool: 9, f16: 10, bf16: 16 } as const;
export type Elem = (typeof ELEM)[keyof typeof ELEM];

export type Attr = { i: number } | { f: number } | { ints: number[] } | { s: string };
const AT = onnx.AttributeProto.AttributeType;

function attrProto(name: string, a: Attr): onnxProto.onnx.IAttributeProto {
  if ("i" in a) return { name, type: AT.INT, i: a.i };
  if ("f" in a) return { name, type: AT.FLOAT, f: a.f };
  if ("ints" in a) return { name, type: AT.INTS, ints: a.ints };
  return { name, type: AT.STRING, s: new TextEncoder().encode(a.s) };
}

export type Dim = number | string;

export function valueInfo(name: string, elem: number, dims?: Dim[]): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: elem,
        ...(dims
          ? { shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) } }
          : {}),
      },
    },
  };
}

export class OnnxBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];
  /** Element type of every value created here (and of graph inputs / weights once declared). */
  readonly elems = new Map<string, number>();
  private counter = 0;
  private consts = new Map<string, string>();
  readonly domains = new Set<string>();

  fresh(hint: string): string {
    return `${hint.replace(/[^A-Za-z0-9_.]/g, "_")}_${this.counter++}`;
  }

  /** Emits a node; returns its output names. The outputs take `elem`, else the first input's type. */
  op(
    type: string,
    inputs: string[],
    attrs: Record<string, Attr> = {},
    o: { outputs?: number; elem?: number; domain?: string; names?: string[] } = {},
  ): string[] {
    const n = o.outputs ?? 1;
    const outputs = o.names ?? Array.from({ length: n }, () => this.fresh(type));
    const like = type === "Where" ? inputs[1] : inputs.find((i) => i !== "");
    const elem = o.elem ?? this.elems.get(like ?? "");
    for (const out of outputs) if (elem !== undefined) this.elems.set(out, elem);
    this.nodes.push({
      opType: type,
      input: inputs,
      output: outputs,
      name: this.fresh(`n_${type}`),
      attribute: Object.entries(attrs).map(([k, a]) => attrProto(k, a)),
      ...(o.domain ? { domain: o.domain } : {}),
    });
    if (o.domain) this.domains.add(o.domain);
    return outputs;
  }

  op1(type: string, inputs: string[], attrs: Record<string, Attr> = {}, elem?: number): string {
    return this.op(type, inputs, attrs, { elem })[0];
  }

  /** A small constant initializer (deduplicated). */
  constant(values: number[], dims: number[], elem: number): string {
    const key = JSON.stringify([values, dims, elem]);
    const hit = this.consts.get(key);
    if (hit) return hit;
    const name = this.fresh("const");
    let raw: Uint8Array;
    if (elem === ELEM.i64) raw = new Uint8Array(BigInt64Array.from(values.map((v) => BigInt(v))).buffer);
    else if (elem === ELEM.f32) raw = new Uint8Array(Float32Array.from(values).buffer);
    else if (elem === ELEM.bool) raw = Uint8Array.from(values);
    else if (elem === ELEM.f16) raw = new Uint8Array(Uint16Array.from(values, f32ToF16Bits).buffer);
    else if (elem === ELEM.bf16) raw = new Uint8Array(Uint16Array.from(values, f32ToBf16Bits).buffer);
    else throw new Error(`constant of element type ${elem}`);
    this.initializers.push({ name, dims, dataType: elem, rawData: raw });
    this.elems.set(name, elem);
    this.consts.set(key, name);
    return name;
  }

  i64(values: number[]): string {
    return this.constant(values, [values.length], ELEM.i64);
  }

  scalarI64(v: number): string {
    return this.constant([v], [], ELEM.i64);
  }
}
