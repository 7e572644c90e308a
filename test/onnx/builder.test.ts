// src/onnx/builder.ts: constants of every element type read back by ONNX Runtime, fresh names, the element
// type each node's outputs get (written as value_info), attributes of each kind, domains, refusals.
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { f16BitsToF32 } from "../../src/checkpoint/dtype.ts";
import { ELEM, OnnxBuilder, onnx, valueInfo } from "../../src/onnx/builder.ts";

/** Runs `b`'s graph (no inputs) in ONNX Runtime with `outputs` as its outputs (types from b.elems). */
async function run(b: OnnxBuilder, outputs: string[]) {
  const model = onnx.ModelProto.encode({
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    graph: {
      name: "t",
      node: b.nodes,
      initializer: b.initializers,
      input: [],
      output: outputs.map((o) => valueInfo(o, b.elems.get(o)!)),
    },
  }).finish();
  const s = await ort.InferenceSession.create(model);
  return s.run({});
}

describe("OnnxBuilder", () => {
  it("constants of each element type hold their values (ONNX Runtime reads them back)", async () => {
    const b = new OnnxBuilder();
    const f32 = b.constant([1.5, -2.25, 3], [3], ELEM.f32);
    const i64 = b.i64([-1, 7, 2 ** 40]);
    const s64 = b.scalarI64(-5);
    const bool = b.constant([1, 0, 1], [3], ELEM.bool);
    const f16 = b.constant([0.1, -65504, 1], [3], ELEM.f16);
    const bf16 = b.constant([0.1, -1.5 * 2 ** 100, 1], [1, 3], ELEM.bf16);
    // Outputs through Identity (graph outputs that are initializers are not allowed everywhere).
    const outs = [f32, i64, s64, bool, f16].map((x) => b.op1("Identity", [x]));
    // (onnxruntime-node has no bf16 tensors: read it through a Cast to fp32)
    outs.push(b.op1("Cast", [bf16], { to: { i: ELEM.f32 } }, ELEM.f32));
    const r = await run(b, outs);
    const v = outs.map((o) => r[o]);
    expect(Array.from(v[0].data as Float32Array)).toEqual([1.5, -2.25, 3]);
    expect(v[0].dims).toEqual([3]);
    expect(Array.from(v[1].data as BigInt64Array)).toEqual([-1n, 7n, 2n ** 40n]);
    expect(v[2].dims).toEqual([]);
    expect(Array.from(v[2].data as BigInt64Array)).toEqual([-5n]);
    expect(v[3].type).toBe("bool");
    expect(Array.from(v[3].data as Uint8Array, Number)).toEqual([1, 0, 1]);
    expect(v[4].type).toBe("float16");
    expect(Array.from(v[4].data as Uint16Array, f16BitsToF32)).toEqual([0.0999755859375, -65504, 1]);
    expect(b.elems.get(bf16)).toBe(ELEM.bf16);
    expect(v[5].dims).toEqual([1, 3]);
    expect(Array.from(v[5].data as Float32Array)).toEqual([0.10009765625, -1.5 * 2 ** 100, 1]);
    // The outputs got their input's element type.
    expect(outs.map((o) => b.elems.get(o))).toEqual([1, 7, 7, 9, 10, 1]);
  });

  it("constants are shared when values, dims and type are equal; not otherwise", () => {
    const b = new OnnxBuilder();
    const a = b.i64([1, 2]);
    expect(b.i64([1, 2])).toBe(a);
    expect(b.constant([1, 2], [2], ELEM.i64)).toBe(a);
    expect(b.constant([1, 2], [1, 2], ELEM.i64)).not.toBe(a);
    expect(b.constant([1, 2], [2], ELEM.f32)).not.toBe(a);
    expect(b.i64([2, 1])).not.toBe(a);
    expect(b.scalarI64(3)).not.toBe(b.i64([3]));
    expect(b.initializers.length).toBe(5 + 1);
    expect(new Set(b.initializers.map((t) => t.name)).size).toBe(b.initializers.length);
  });

  it("a constant of another element type is refused", () => {
    expect(() => new OnnxBuilder().constant([1], [1], ELEM.i32)).toThrow(
      new Error("constant of element type 6"),
    );
    expect(() => new OnnxBuilder().constant([1], [1], ELEM.i8)).toThrow(
      new Error("constant of element type 3"),
    );
  });

  it("fresh names: characters outside [A-Za-z0-9_.] become _, one counter for all", () => {
    const b = new OnnxBuilder();
    expect(b.fresh("model.layers.0/mlp-up:x")).toBe("model.layers.0_mlp_up_x_0");
    expect(b.fresh("a")).toBe("a_1");
    expect(b.fresh("Z9_.")).toBe("Z9_._2");
  });

  it("node outputs: the given element type, else Where's second input's, else the first named input's; attributes of each kind; domains", () => {
    const b = new OnnxBuilder();
    b.elems.set("x", ELEM.f16);
    b.elems.set("c", ELEM.bool);
    b.elems.set("y", ELEM.f32);
    const [w] = b.op("Where", ["c", "x", "y"]);
    expect(b.elems.get(w)).toBe(ELEM.f16);
    const [p, q] = b.op("Split", ["", "y"], { axis: { i: -1 } }, { outputs: 2 });
    expect([b.elems.get(p), b.elems.get(q)]).toEqual([ELEM.f32, ELEM.f32]);
    const cast = b.op1("Cast", ["y"], { to: { i: ELEM.f16 } }, ELEM.f16);
    expect(b.elems.get(cast)).toBe(ELEM.f16);
    const unknown = b.op1("Relu", ["nowhere"]);
    expect(b.elems.has(unknown)).toBe(false);
    const named = b.op("AllReduce", ["x"], {}, { names: ["sum"], domain: "com.microsoft" });
    expect(named).toEqual(["sum"]);
    b.op1("Gelu", ["x"], { approximate: { s: "tanh" }, alpha: { f: 0.5 }, perm: { ints: [1, 0] } });
    expect([...b.domains]).toEqual(["com.microsoft"]);
    expect(b.nodes.map((n) => [n.opType, n.domain ?? "", n.input, n.output!.length])).toEqual([
      ["Where", "", ["c", "x", "y"], 1],
      ["Split", "", ["", "y"], 2],
      ["Cast", "", ["y"], 1],
      ["Relu", "", ["nowhere"], 1],
      ["AllReduce", "com.microsoft", ["x"], 1],
      ["Gelu", "", ["x"], 1],
    ]);
    expect(new Set(b.nodes.map((n) => n.name)).size).toBe(6);
    expect(b.nodes[0].name!.startsWith("n_Where_")).toBe(true);
    const AT = onnx.AttributeProto.AttributeType;
    const round = onnx.NodeProto.decode(onnx.NodeProto.encode(b.nodes[5]).finish());
    expect(
      round.attribute!.map((a) => [
        a.name,
        a.type,
        a.s?.length ? new TextDecoder().decode(a.s) : a.f || a.ints?.map(Number),
      ]),
    ).toEqual([
      ["approximate", AT.STRING, "tanh"],
      ["alpha", AT.FLOAT, 0.5],
      ["perm", AT.INTS, [1, 0]],
    ]);
    const split = onnx.NodeProto.decode(onnx.NodeProto.encode(b.nodes[1]).finish());
    expect(split.attribute!.map((a) => [a.name, a.type, Number(a.i)])).toEqual([["axis", AT.INT, -1]]);
  });

  it("valueInfo: numbers as dim_value, strings as dim_param; no shape without dims", () => {
    const v = onnx.ValueInfoProto.decode(
      onnx.ValueInfoProto.encode(valueInfo("a", ELEM.f16, [1, "seq", 4])).finish(),
    );
    expect(v.name).toBe("a");
    expect(v.type!.tensorType!.elemType).toBe(10);
    expect(v.type!.tensorType!.shape!.dim!.map((d) => [Number(d.dimValue ?? 0), d.dimParam || ""])).toEqual([
      [1, ""],
      [0, "seq"],
      [4, ""],
    ]);
    const s = onnx.ValueInfoProto.decode(onnx.ValueInfoProto.encode(valueInfo("s", ELEM.i64, [])).finish());
    expect(s.type!.tensorType!.shape).toBeTruthy();
    const n = onnx.ValueInfoProto.decode(onnx.ValueInfoProto.encode(valueInfo("n", ELEM.i64)).finish());
    expect(n.type!.tensorType!.shape ?? null).toBe(null);
  });
});
