// The export itself (src/onnx/export.ts exportOnnxRank, src/onnx/write.ts writeOnnx): what the files say
// about themselves, read back with onnx-proto (inputs / outputs with their types and shapes, metadata,
// value_info, external data: location, 4 KiB aligned offsets, lengths and the bytes at them), hand-built
// graphs run in ONNX Runtime, random-weight exports against the CPU reference executor, fp16 exports
// against the transformers goldens, and the refusals (one line, the file handle closed, no folder left).
// test/onnx/onnx.test.ts runs the bundled models against the goldens; lower.test.ts each op's lowering.
import * as fs from "node:fs";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from "../../src/checkpoint/dtype.ts";
import { compileEngine } from "../../src/compile.ts";
import type { ModelFacts } from "../../src/dsl/model.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { readGolden } from "../../src/golden.ts";
import type { Graph, Node, Value } from "../../src/ir/types.ts";
import { onnx, type TensorProto, type ValueInfoProto } from "../../src/onnx/builder.ts";
import { exportOnnxRank } from "../../src/onnx/export.ts";
import { type OnnxDirConfig, writeOnnx } from "../../src/onnx/write.ts";
import { LLAMA_MODEL, TINY_LLAMA, tinyLlamaBuild, tmpDir } from "../fixtures.ts";
import { OrtRanks } from "./ort-ranks.ts";

// (tmpDir's folders are removed after this file.)
const box = () => tmpDir("tsllm-onnx-export-");

type Model = ReturnType<typeof onnx.ModelProto.decode>;
const decode = (file: string): Model => onnx.ModelProto.decode(fs.readFileSync(file));
const i64 = (xs: number[]) => new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), [1, xs.length]);
const openFds = () => fs.readdirSync("/proc/self/fd").length;

const T = { sym: "num_tokens", max: 8 };
const weight = (
  id: number,
  name: string,
  shape: number[],
  data: number[],
  dtype: Value["dtype"] = "f32",
): Value => ({
  id,
  name,
  dtype,
  shape,
  kind: "weight",
  recipe: { kind: "constant", data },
});
const act = (id: number, shape: Value["shape"], dtype: Value["dtype"] = "f32"): Value => ({
  id,
  name: `v${id}`,
  dtype,
  shape,
  kind: "activation",
});

/** A graph with input_ids (0) and positions (1), the given values and nodes, and `logits` as its output. */
function handGraph(
  values: Value[],
  nodes: Node[],
  logits: number,
  meta = { numLayers: 0, numKvHeads: 1, headDim: 4 },
) {
  const g: Graph = {
    values: new Map(),
    nodes,
    inputs: { input_ids: 0, positions: 1 },
    outputs: { logits },
    meta,
    nextId: 100,
  };
  for (const v of [
    { id: 0, name: "input_ids", dtype: "i32", shape: [T], kind: "input" } as Value,
    { id: 1, name: "positions", dtype: "i32", shape: [T], kind: "input" } as Value,
    ...values,
  ])
    g.values.set(v.id, v);
  return g;
}

const A = [0.5, -1.25, 2, 3.5, -0.75, 1];
const B = [1.5, 0.25, -4, 0.125, 2.75, -3];
/** logits = w + w, two different weights of the same name [2, 3]. */
const sameNames = (dtype: Value["dtype"] = "f32") =>
  handGraph(
    [weight(2, "w", [2, 3], A, dtype), weight(3, "w", [2, 3], B, dtype), act(4, [2, 3], dtype)],
    [{ op: "add", inputs: [2, 3], outputs: [4], attrs: {} }],
    4,
  );

function exportTo(
  graph: Graph,
  o: { dtype?: string; rank?: number; metadata?: Record<string, string> } = {},
) {
  const dir = box();
  const bytes = exportOnnxRank({
    graph,
    rank: o.rank ?? 0,
    build: tinyLlamaBuild({ dtype: o.dtype ?? "fp32" }),
    checkpoint: null,
    dataPath: path.join(dir, "m.onnx.data"),
    dataName: "m.onnx.data",
    metadata: o.metadata,
  });
  fs.writeFileSync(path.join(dir, "m.onnx"), bytes);
  return {
    dir,
    file: path.join(dir, "m.onnx"),
    data: fs.readFileSync(path.join(dir, "m.onnx.data")),
    model: decode(path.join(dir, "m.onnx")),
  };
}

const ext = (t: TensorProto) => Object.fromEntries((t.externalData ?? []).map((e) => [e.key!, e.value!]));
const dims = (v: ValueInfoProto) =>
  v.type!.tensorType!.shape!.dim!.map((d) => (d.dimParam ? d.dimParam : Number(d.dimValue)));
const elemOf = (v: ValueInfoProto) => v.type!.tensorType!.elemType;

describe("exportOnnxRank on hand-built graphs", () => {
  it("a weight called w.3, then two called w, the second of id 3: three distinct names (the old rename looped for ever)", {
    timeout: 10_000,
  }, async () => {
    const C = [2, 2, 2, 2, 2, 2];
    const g = handGraph(
      [
        weight(2, "w.3", [2, 3], A),
        weight(4, "w", [2, 3], B),
        weight(3, "w", [2, 3], C),
        act(5, [2, 3]),
        act(6, [2, 3]),
      ],
      [
        { op: "add", inputs: [2, 4], outputs: [5], attrs: {} },
        { op: "add", inputs: [5, 3], outputs: [6], attrs: {} },
      ],
      6,
    );
    const { file, model } = exportTo(g);
    const names = model.graph!.initializer!.filter(
      (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
    );
    expect(names.map((t) => t.name)).toEqual(["w.3", "w", "w.3.1"]);
    const s = await ort.InferenceSession.create(file);
    const out = await s.run({ input_ids: i64([5, 6]), position_ids: i64([0, 1]) });
    expect(Array.from(out.logits.data as Float32Array)).toEqual(
      A.map((a, i) => Math.fround(a + B[i] + C[i])),
    );
  });

  it("two weights of one name: both kept (w, w.3), each at a 4 KiB aligned offset of the data file, zeros between; ONNX Runtime adds them", async () => {
    const { file, data, model } = exportTo(sameNames(), { rank: 3, metadata: { a: "1", b: "two" } });
    const weights = model.graph!.initializer!.filter(
      (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
    );
    expect(weights.map((t) => t.name)).toEqual(["w", "w.3"]);
    expect(weights.map((t) => t.dims!.map(Number))).toEqual([
      [2, 3],
      [2, 3],
    ]);
    expect(weights.map((t) => t.dataType)).toEqual([1, 1]);
    expect(weights.map(ext)).toEqual([
      { location: "m.onnx.data", offset: "0", length: "24" },
      { location: "m.onnx.data", offset: "4096", length: "24" },
    ]);
    for (const t of weights) expect(t.rawData?.length ?? 0).toBe(0);
    expect(data.length).toBe(4096 + 24);
    expect(new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + 24))).toEqual(
      Float32Array.from(A),
    );
    expect(data.subarray(24, 4096).every((x) => x === 0)).toBe(true);
    expect(new Float32Array(data.buffer.slice(data.byteOffset + 4096, data.byteOffset + 4120))).toEqual(
      Float32Array.from(B),
    );

    // The model's own fields.
    expect(Number(model.irVersion)).toBe(8);
    expect(model.producerName).toBe("tsllm");
    expect(model.producerVersion).toBe("1");
    expect(model.opsetImport!.map((o) => [o.domain ?? "", Number(o.version)])).toEqual([["", 17]]);
    expect(model.metadataProps!.map((p) => [p.key, p.value])).toEqual([
      ["a", "1"],
      ["b", "two"],
    ]);
    expect(model.graph!.name).toBe("tsllm_rank3");
    expect(model.graph!.input!.map((v) => [v.name, elemOf(v), dims(v)])).toEqual([
      ["input_ids", 7, [1, "sequence_length"]],
      ["position_ids", 7, [1, "sequence_length"]],
    ]);
    expect(model.graph!.output!.map((v) => [v.name, elemOf(v), dims(v)])).toEqual([
      ["logits", 1, [1, "sequence_length", 3]],
    ]);
    // value_info: every node output that is not a graph output, with its element type; no inputs,
    // outputs or initializers among them.
    const produced = model.graph!.node!.flatMap((n) => n.output!).filter((n) => n !== "logits");
    const info = model.graph!.valueInfo!;
    expect(info.map((v) => v.name).sort()).toEqual([...produced].sort());
    const byOp = new Map(model.graph!.node!.map((n) => [n.output![0], n.opType]));
    for (const v of info) expect(elemOf(v)).toBe(byOp.get(v.name!) === "Reshape" ? 7 : 1);
    expect(info.every((v) => !v.type!.tensorType!.shape)).toBe(true);

    const s = await ort.InferenceSession.create(file);
    const out = await s.run({ input_ids: i64([5, 6]), position_ids: i64([0, 1]) });
    expect(out.logits.dims).toEqual([1, 2, 3]);
    expect(Array.from(out.logits.data as Float32Array)).toEqual(A.map((a, i) => Math.fround(a + B[i])));
  });

  it("no metadata: none written; a weight used twice is declared once", () => {
    const g = handGraph(
      [weight(2, "w", [2, 3], A), act(4, [2, 3]), act(5, [2, 3])],
      [
        { op: "add", inputs: [2, 2], outputs: [4], attrs: {} },
        { op: "mul", inputs: [4, 2], outputs: [5], attrs: {} },
      ],
      5,
    );
    const { data, model } = exportTo(g);
    expect(model.metadataProps).toEqual([]);
    const weights = model.graph!.initializer!.filter(
      (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
    );
    expect(weights.map((t) => [t.name, ext(t)])).toEqual([
      ["w", { location: "m.onnx.data", offset: "0", length: "24" }],
    ]);
    expect(data.length).toBe(24);
  });

  it("fp16 and bf16: weights stored in the activation type (2 bytes each), logits of that type; fp16 runs in ONNX Runtime", async () => {
    for (const [dtype, dt, elem, bits] of [
      ["fp16", "f16", 10, f32ToF16Bits],
      ["bf16", "bf16", 16, f32ToBf16Bits],
    ] as const) {
      const { file, data, model } = exportTo(sameNames(dt), { dtype });
      const weights = model.graph!.initializer!.filter(
        (t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL,
      );
      expect(weights.map((t) => [t.name, t.dataType, ext(t).offset, ext(t).length])).toEqual([
        ["w", elem, "0", "12"],
        ["w.3", elem, "4096", "12"],
      ]);
      expect(data.length).toBe(4096 + 12);
      const u16 = (off: number) =>
        Array.from(new Uint16Array(data.buffer.slice(data.byteOffset + off, data.byteOffset + off + 12)));
      expect(u16(0)).toEqual(A.map(bits));
      expect(u16(4096)).toEqual(B.map(bits));
      expect(elemOf(model.graph!.output![0])).toBe(elem);
      const add = model.graph!.node!.find((n) => n.opType === "Add")!.output![0];
      expect(elemOf(model.graph!.valueInfo!.find((v) => v.name === add)!)).toBe(elem);
      if (dtype === "fp16") {
        const s = await ort.InferenceSession.create(file);
        const out = await s.run({ input_ids: i64([5, 6]), position_ids: i64([0, 1]) });
        expect(out.logits.type).toBe("float16");
        expect(Array.from(out.logits.data as Uint16Array, f16BitsToF32)).toEqual(A.map((a, i) => a + B[i]));
      }
    }
  });

  const refusals: [string, Graph, string][] = [
    [
      "an op without a lowering",
      handGraph([act(4, [2, 3])], [{ op: "frobnicate", inputs: [0], outputs: [4], attrs: {} }], 4),
      'ONNX export: no standard-ONNX lowering for op "frobnicate"',
    ],
    [
      "a quantised linear",
      handGraph([act(4, [2, 3])], [{ op: "quant_linear", inputs: [0], outputs: [4], attrs: {} }], 4),
      'ONNX export: no standard-ONNX lowering for op "quant_linear" (export with --quant none)',
    ],
    [
      "an activation used before its node",
      handGraph(
        [weight(2, "w", [2, 3], A), act(4, [2, 3]), act(7, [2, 3])],
        [{ op: "add", inputs: [2, 7], outputs: [4], attrs: {} }],
        4,
      ),
      "ONNX export: value %7 used before it is defined",
    ],
    [
      "a value not in the graph",
      handGraph([act(4, [2, 3])], [{ op: "add", inputs: [0, 9], outputs: [4], attrs: {} }], 4),
      "ONNX export: value %9 used before it is defined",
    ],
    [
      "a width that is a symbol",
      handGraph(
        [act(6, [T, { sym: "w", max: 8 }]), act(4, [2, 3])],
        [{ op: "gated_act", inputs: [6], outputs: [4], attrs: { activation: "silu" } }],
        4,
      ),
      "ONNX export: %6 has no static width",
    ],
  ];
  for (const [what, graph, message] of refusals)
    it(`refused: ${what} (exact message, the data file handle closed)`, () => {
      const dir = box();
      const before = openFds();
      expect(() =>
        exportOnnxRank({
          graph,
          rank: 0,
          build: tinyLlamaBuild(),
          checkpoint: null,
          dataPath: path.join(dir, "m.onnx.data"),
          dataName: "m.onnx.data",
        }),
      ).toThrow(new Error(message));
      expect(openFds()).toBeLessThanOrEqual(before);
    });
});

const facts = { vocabSize: 3 } as unknown as ModelFacts;

describe("writeOnnx", () => {
  it("onnx.json: the I/O contract per layer, each rank's file and data sizes, metadata per rank", async () => {
    const out = path.join(box(), "onnx");
    const meta = { numLayers: 2, numKvHeads: 3, headDim: 4 };
    const build = tinyLlamaBuild({ tp: 2 });
    const model = { architecture: "Toy", hidden: 7 };
    const config = await writeOnnx({
      outDir: out,
      ranks: [
        sameNames(),
        handGraph(
          [weight(2, "w", [2, 3], B), act(4, [2, 3])],
          [{ op: "scale", inputs: [2], outputs: [4], attrs: { factor: 2 } }],
          4,
          meta,
        ),
      ].map((g) => ({ ...g, meta })),
      build,
      model,
      facts,
      checkpoint: null,
    });
    expect(fs.readdirSync(out).sort()).toEqual([
      "onnx.json",
      "rank0.onnx",
      "rank0.onnx.data",
      "rank1.onnx",
      "rank1.onnx.data",
    ]);
    const size = (f: string) => fs.statSync(path.join(out, f)).size;
    const kv = (p: string) => [`${p}.0.key`, `${p}.0.value`, `${p}.1.key`, `${p}.1.value`];
    const want: OnnxDirConfig = {
      format: "tsllm-onnx",
      opset: 17,
      tp: 2,
      ranks: [
        { file: "rank0.onnx", data: "rank0.onnx.data", bytes: size("rank0.onnx"), data_bytes: 4096 + 24 },
        { file: "rank1.onnx", data: "rank1.onnx.data", bytes: size("rank1.onnx"), data_bytes: 24 },
      ],
      inputs: ["input_ids", "position_ids", ...kv("past_key_values")],
      outputs: ["logits", ...kv("present")],
      num_layers: 2,
      kv_heads_per_rank: 3,
      head_dim: 4,
      model,
      facts,
      build,
    };
    expect(config).toEqual(want);
    const text = fs.readFileSync(path.join(out, "onnx.json"), "utf8");
    expect(JSON.parse(text)).toEqual(want);
    expect(text.endsWith("}\n")).toBe(true);
    expect(text.split("\n")[1]).toBe('  "format": "tsllm-onnx",');
    for (const r of [0, 1]) {
      const m = decode(path.join(out, `rank${r}.onnx`));
      expect(m.graph!.name).toBe(`tsllm_rank${r}`);
      expect(m.metadataProps!.map((p) => [p.key, p.value])).toEqual([
        ["tsllm_rank", String(r)],
        ["tsllm_tp", "2"],
        ["architecture", "Toy"],
      ]);
      expect(ext(m.graph!.initializer!.find((t) => t.name === "w")!).location).toBe(`rank${r}.onnx.data`);
    }
    // rank 1 scales its own weight: its file is its own.
    const s = await ort.InferenceSession.create(path.join(out, "rank1.onnx"));
    const o = await s.run({ input_ids: i64([1, 2]), position_ids: i64([0, 1]) });
    expect(Array.from(o.logits.data as Float32Array)).toEqual(B.map((x) => x * 2));
  });

  it("no architecture in the model: an empty metadata value; an existing folder only replaced with force", async () => {
    const out = path.join(box(), "onnx");
    fs.mkdirSync(out);
    fs.writeFileSync(path.join(out, "notes.txt"), "mine");
    const o = {
      outDir: out,
      ranks: [sameNames()],
      build: tinyLlamaBuild(),
      model: {},
      facts,
      checkpoint: null,
    };
    await expect(writeOnnx(o)).rejects.toThrow(/not a tsllm engine or ONNX export; not replacing it/);
    expect(fs.readdirSync(out)).toEqual(["notes.txt"]);
    await writeOnnx({ ...o, force: true });
    expect(fs.readdirSync(out).sort()).toEqual(["onnx.json", "rank0.onnx", "rank0.onnx.data"]);
    const m = decode(path.join(out, "rank0.onnx"));
    expect(m.metadataProps!.map((p) => [p.key, p.value])).toEqual([
      ["tsllm_rank", "0"],
      ["tsllm_tp", "1"],
      ["architecture", ""],
    ]);
  });

  it("a rank that cannot be exported: the same one-line error, no folder left, nothing beside it", async () => {
    const parent = box();
    const bad = handGraph([act(4, [2, 3])], [{ op: "frobnicate", inputs: [0], outputs: [4], attrs: {} }], 4);
    const before = openFds();
    const err = await writeOnnx({
      outDir: path.join(parent, "onnx"),
      ranks: [sameNames(), bad],
      build: tinyLlamaBuild({ tp: 2 }),
      model: {},
      facts,
      checkpoint: null,
    }).then(
      () => "written",
      (e: Error) => e.message,
    );
    expect(err).toBe('ONNX export: no standard-ONNX lowering for op "frobnicate"');
    expect(fs.readdirSync(parent)).toEqual([]);
    expect(openFds()).toBeLessThanOrEqual(before);
  });
});

// --- whole models ---------------------------------------------------------------------------------

const llamaOnnx = async (
  o: { dtype?: string; tp?: number; random?: boolean; emit?: "onnx" | "engine"; disable?: string[] } = {},
) => {
  const out = path.join(box(), "out");
  await compileEngine({
    modelFile: LLAMA_MODEL,
    ...(o.random
      ? { config: path.join(TINY_LLAMA, "config.json"), randomWeights: true, seed: 7 }
      : { checkpoint: TINY_LLAMA }),
    sm: 90,
    dtype: o.dtype ?? "fp32",
    maxNumTokens: 64,
    maxSeqLen: 64,
    maxBatchSize: 1,
    emit: o.emit ?? "onnx",
    disablePasses: o.disable,
    tp: o.tp,
    out,
    log: () => {},
  });
  return out;
};

/** The checkpoint's tensors: name → raw bytes (safetensors: u64 header length, JSON header, data). */
function safetensors(file: string): Map<string, { dtype: string; shape: number[]; bytes: Buffer }> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8")) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, { dtype: string; shape: number[]; bytes: Buffer }>();
  for (const [k, v] of Object.entries(header))
    if (k !== "__metadata__")
      out.set(k, {
        dtype: v.dtype,
        shape: v.shape,
        bytes: buf.subarray(8 + n + v.data_offsets[0], 8 + n + v.data_offsets[1]),
      });
  return out;
}

/** Max |Δlogit| of a tiny-llama tp 1 export against the first golden prompt: prefill, then 3 decode steps. */
async function goldenMaxAbs(out: string, dtype: "fp32" | "fp16"): Promise<number> {
  const s = await ort.InferenceSession.create(path.join(out, "rank0.onnx"));
  const p = readGolden(path.join(TINY_LLAMA, "golden.safetensors")).prompts[0];
  const empty = () =>
    dtype === "fp16"
      ? new ort.Tensor("float16", new Uint16Array(0), [1, 2, 0, 32])
      : new ort.Tensor("float32", new Float32Array(0), [1, 2, 0, 32]);
  let past: Record<string, ort.Tensor> = {};
  for (let l = 0; l < 2; l++) for (const kv of ["key", "value"]) past[`past_key_values.${l}.${kv}`] = empty();
  let maxAbs = 0;
  let n = 0;
  const stepTo = async (start: number, end: number) => {
    const ids = p.inputIds.slice(start, end);
    const o = await s.run({ ...past, input_ids: i64(ids), position_ids: i64(ids.map((_, i) => start + i)) });
    past = {};
    for (let l = 0; l < 2; l++)
      for (const kv of ["key", "value"]) past[`past_key_values.${l}.${kv}`] = o[`present.${l}.${kv}`];
    const d =
      dtype === "fp16"
        ? Array.from(o.logits.data as Uint16Array, f16BitsToF32)
        : (o.logits.data as Float32Array);
    expect(d.length).toBe(ids.length * p.vocab);
    for (let i = 0; i < d.length; i++)
      maxAbs = Math.max(maxAbs, Math.abs(d[i] - p.logits[start * p.vocab + i]));
    n += ids.length;
  };
  await stepTo(0, p.promptLen);
  for (let t = p.promptLen; t < p.promptLen + 3; t++) await stepTo(t, t + 1);
  expect(n).toBe(p.promptLen + 3);
  return maxAbs;
}

describe("tiny-llama exports", () => {
  it("fp32 tp 1: inputs / outputs per layer as Hugging Face's exports; weights at aligned offsets, the checkpoint's bytes; one cos / sin for both layers", async () => {
    const out = await llamaOnnx();
    const m = decode(path.join(out, "rank0.onnx"));
    const g = m.graph!;
    const kvIn = [0, 1].flatMap((l) =>
      ["key", "value"].map((k) => [`past_key_values.${l}.${k}`, 1, [1, 2, "past_sequence_length", 32]]),
    );
    const kvOut = [0, 1].flatMap((l) =>
      ["key", "value"].map((k) => [`present.${l}.${k}`, 1, [1, 2, "total_sequence_length", 32]]),
    );
    expect(g.input!.map((v) => [v.name, elemOf(v), dims(v)])).toEqual([
      ["input_ids", 7, [1, "sequence_length"]],
      ["position_ids", 7, [1, "sequence_length"]],
      ...kvIn,
    ]);
    expect(g.output!.map((v) => [v.name, elemOf(v), dims(v)])).toEqual([
      ["logits", 1, [1, "sequence_length", 512]],
      ...kvOut,
    ]);
    expect(g.node!.filter((n) => n.opType === "Cos").length).toBe(1);
    expect(g.node!.filter((n) => n.opType === "Sin").length).toBe(1);
    // Value names are unique among inputs, initializers and value_info.
    const all = [...g.input!, ...g.output!, ...g.valueInfo!]
      .map((v) => v.name!)
      .concat(g.initializer!.map((t) => t.name!));
    expect(new Set(all).size).toBe(all.length);

    const data = fs.readFileSync(path.join(out, "rank0.onnx.data"));
    const ck = safetensors(path.join(TINY_LLAMA, "model.safetensors"));
    const weights = g.initializer!.filter((t) => t.dataLocation === onnx.TensorProto.DataLocation.EXTERNAL);
    let end = 0;
    let same = 0;
    for (const t of weights) {
      const e = ext(t);
      expect(e.location).toBe("rank0.onnx.data");
      const off = Number(e.offset);
      const len = Number(e.length);
      expect(off % 4096).toBe(0);
      expect(off).toBeGreaterThanOrEqual(end);
      expect(off - end).toBeLessThan(4096);
      expect(data.subarray(end, off).every((x) => x === 0)).toBe(true);
      expect(len).toBe(t.dims!.reduce((a, d) => a * Number(d), 4));
      const src = ck.get(t.name!);
      if (src) {
        const f32 = new Float32Array(data.buffer.slice(data.byteOffset + off, data.byteOffset + off + len));
        const want =
          src.dtype === "F32"
            ? new Float32Array(
                src.bytes.buffer.slice(src.bytes.byteOffset, src.bytes.byteOffset + src.bytes.length),
              )
            : Float32Array.from(
                new Uint16Array(
                  src.bytes.buffer.slice(src.bytes.byteOffset, src.bytes.byteOffset + src.bytes.length),
                ),
                (h) => new Float32Array(new Uint32Array([h << 16]).buffer)[0],
              );
        expect(src.dtype === "F32" || src.dtype === "BF16").toBe(true);
        expect(f32).toEqual(want);
        same++;
      }
      end = off + len;
    }
    expect(data.length).toBe(end);
    expect(same).toBeGreaterThanOrEqual(5); // the norms and the embedding / lm_head at least
    expect(weights.length).toBeGreaterThan(same);
  });

  it("--random-weights, tp 2: each rank's weights from its own seed; ONNX Runtime equals the reference executor on the same build", async () => {
    const onnxDir = await llamaOnnx({ random: true, tp: 2 });
    const engine = await llamaOnnx({ random: true, tp: 2, emit: "engine" });
    const tokens = [3, 17, 42, 5, 9, 30];
    const ex = ReferenceExecutor.load(engine);
    const want = [
      ...ex.step([{ seqId: 1, tokens: tokens.slice(0, 5), logits: "all" }]).get(1)!,
      ...ex.step([{ seqId: 1, tokens: [tokens[5]], logits: "last" }]).get(1)!,
    ];
    // The collectives' domain is imported at version 1 beside opset 17.
    expect(
      decode(path.join(onnxDir, "rank1.onnx")).opsetImport!.map((o) => [o.domain ?? "", Number(o.version)]),
    ).toEqual([
      ["", 17],
      ["com.microsoft", 1],
    ]);
    const ranks = await OrtRanks.load(onnxDir);
    const empty = () => {
      const f: Record<string, ort.Tensor> = {};
      for (let l = 0; l < 2; l++)
        for (const kv of ["key", "value"])
          f[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [1, 1, 0, 32]);
      return f;
    };
    const a = await ranks.run(
      [0, 1].map(() => ({
        ...empty(),
        input_ids: i64(tokens.slice(0, 5)),
        position_ids: i64([0, 1, 2, 3, 4]),
      })),
    );
    const past = a.map((o) => {
      const f: Record<string, ort.Tensor> = {};
      for (let l = 0; l < 2; l++)
        for (const kv of ["key", "value"]) f[`past_key_values.${l}.${kv}`] = o[`present.${l}.${kv}`];
      return f;
    });
    const b = await ranks.run(
      past.map((f) => ({ ...f, input_ids: i64([tokens[5]]), position_ids: i64([5]) })),
    );
    const got = [a[0].logits, b[0].logits].flatMap((t) => {
      const d = t.data as Float32Array;
      return Array.from({ length: d.length / 512 }, (_, i) => d.subarray(i * 512, (i + 1) * 512));
    });
    expect(got.length).toBe(6);
    let maxAbs = 0;
    let spread = 0;
    for (let t = 0; t < 6; t++)
      for (let v = 0; v < 512; v++) {
        maxAbs = Math.max(maxAbs, Math.abs(got[t][v] - want[t][v]));
        spread = Math.max(spread, Math.abs(want[t][v]));
      }
    console.log(
      `random tiny-llama tp 2: ONNX vs reference max |Δlogit| ${maxAbs.toExponential(2)} (max |logit| ${spread})`,
    );
    expect(spread).toBeGreaterThan(0.01);
    expect(maxAbs).toBeLessThanOrEqual(1e-5); // measured 3.58e-7
  });

  it("fp16: past / present / logits in fp16, rope's cos / sin cast from fp32; ONNX Runtime near the fp32 goldens", async () => {
    const out = await llamaOnnx({ dtype: "fp16" });
    const m = decode(path.join(out, "rank0.onnx"));
    expect(m.graph!.input!.slice(2).map(elemOf)).toEqual([10, 10, 10, 10]);
    expect(m.graph!.output!.map(elemOf)).toEqual([10, 10, 10, 10, 10]);
    const maxAbs = await goldenMaxAbs(out, "fp16");
    console.log(`tiny-llama fp16 ONNX vs fp32 goldens: max |Δlogit| ${maxAbs.toExponential(2)}`);
    expect(maxAbs).toBeLessThanOrEqual(5e-3);
  });
  it("attention left unfused (--disable-pass attention-fusion): rope and attention read the step's positions; ONNX Runtime matches the goldens", async () => {
    const out = await llamaOnnx({ disable: ["attention-fusion"] });
    const ops = decode(path.join(out, "rank0.onnx")).graph!.node!.map((n) => n.opType);
    expect(ops.filter((o) => o === "Cos").length).toBe(1);
    const maxAbs = await goldenMaxAbs(out, "fp32");
    console.log(`tiny-llama unfused attention ONNX vs goldens: max |Δlogit| ${maxAbs.toExponential(2)}`);
    expect(maxAbs).toBeLessThanOrEqual(1e-5);
  });
});
