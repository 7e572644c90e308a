// The engine writer's FP8 weights made on the worker pool (src/quant/fp8-pool.ts, Fp8Maker) without a
// checkpoint: the source rows come from the test. Checked against quantizeFp8Rows on this thread: the bytes of
// the values and of the scales weight, one quantisation per values/scales pair (dropped once both were asked
// for, pairs interleaved as a tp build's ranks ask for them), rows in ordinary memory handed to the workers in
// shared memory, the output buffers taken from and given back to the writer's buffer pool, and close().
import { afterAll, describe, expect, it } from "vitest";
import type { Checkpoint } from "../../src/checkpoint/checkpoint.ts";
import type { DType, Value } from "../../src/ir/types.ts";
import { Fp8Maker, Fp8Pool } from "../../src/quant/fp8-pool.ts";
import { quantizeFp8Rows, type SourceRows } from "../../src/quant/fp8-rows.ts";
import { BufferPool } from "../../src/weights/prefetch.ts";
import { type Transform, uniformWithStd } from "../../src/weights/recipe.ts";

const K = 1024;
const ckpt = {} as Checkpoint; // only handed through to the test's rowsOf

/** A pool that records what it is asked to quantise, and how often it was closed. */
class Recording extends Fp8Pool {
  asked: SourceRows[][] = [];
  closed = 0;
  override quantize(parts: SourceRows[], k: number, values: Uint8Array, scales: Float32Array) {
    this.asked.push(parts);
    return super.quantize(parts, k, values, scales);
  }
  override close() {
    this.closed++;
    return super.close();
  }
}
const pool = new Recording(2);
afterAll(() => pool.close());

/** `rows` rows of random half-precision bits (NaN, inf, subnormals included) or fp32 values, row 0 all zero. */
function source(dtype: SourceRows["dtype"], rows: number, seed: number, shared = true): SourceRows {
  const n = rows * K;
  const buf = (bytes: number) => (shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  let x = seed;
  const next = () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return x;
  };
  if (dtype === "F32") {
    const d = new Float32Array(buf(4 * n));
    for (let i = K; i < n; i++) d[i] = ((next() >>> 8) / 2 ** 24 - 0.5) * 2 ** ((next() % 40) - 20);
    return { dtype, data: d, rows };
  }
  const d = new Uint16Array(buf(2 * n));
  for (let i = K; i < n; i++) d[i] = next() >>> 16;
  return { dtype, data: d, rows };
}

const pre: Transform[] = [{ op: "slice", axis: 1, start: 0, end: K }]; // a step before quantize, kept
function weight(name: string, output: "values" | "scales", rows: number, part = name, scheme = "fp8"): Value {
  const dtype: DType = output === "values" ? "fp8e4m3" : "f32";
  return {
    id: 0,
    name: `${name}.${output}`,
    dtype,
    shape: output === "values" ? [rows, K] : [rows],
    kind: "weight",
    recipe: {
      kind: "checkpoint",
      parts: [{ name: part, shape: [rows, 2 * K], transforms: [] }],
      transforms: [...pre, { op: "quantize", scheme, output } as Transform],
      init: uniformWithStd(0.02),
    },
  };
}

/** rowsOf for the maker: `rows` for each source name, counting calls, refusing a recipe with its quantize step. */
function reader(rows: Record<string, SourceRows[] | null>) {
  const asked: string[] = [];
  const rowsOf = (v: Value, c: Checkpoint) => {
    expect(c).toBe(ckpt);
    const r = v.recipe;
    if (r?.kind !== "checkpoint") throw new Error(`${v.name}: not a checkpoint weight`);
    expect(r.transforms).toEqual(pre); // without its quantize step
    asked.push(r.parts[0].name);
    return rows[r.parts[0].name] ?? null;
  };
  return { asked, rowsOf };
}

function expected(parts: SourceRows[]) {
  const n = parts.reduce((a, p) => a + p.rows, 0);
  const values = new Uint8Array(n * K);
  const scales = new Float32Array(n);
  quantizeFp8Rows(parts, K, values, scales);
  return { values: Buffer.from(values), scales: Buffer.from(scales.buffer) };
}

describe("Fp8Maker", () => {
  it("a values and a scales weight: quantizeFp8Rows's bytes, the rows read and quantised once for the pair", async () => {
    const parts = [source("BF16", 200, 1), source("F16", 57, 2), source("F32", 43, 3)];
    const want = expected(parts);
    const r = reader({ w: parts });
    const m = new Fp8Maker(pool, r.rowsOf);
    const before = pool.asked.length;
    const values = await m.make(weight("w", "values", 300), ckpt);
    expect(Buffer.from(values!).equals(want.values)).toBe(true);
    const scales = await m.make(weight("w", "scales", 300), ckpt);
    expect(Buffer.from(scales!).equals(want.scales)).toBe(true);
    expect(r.asked).toEqual(["w"]);
    expect(pool.asked.length - before).toBe(1);
    // both were asked for: dropped, so a third ask reads and quantises again (scales first this time)
    expect(Buffer.from((await m.make(weight("w", "scales", 300), ckpt))!).equals(want.scales)).toBe(true);
    expect(Buffer.from((await m.make(weight("w", "values", 300), ckpt))!).equals(want.values)).toBe(true);
    expect(r.asked).toEqual(["w", "w"]);
  });

  it("pairs asked at once and interleaved (a tp build's ranks): each its own bytes, each read once", async () => {
    const a = [source("F16", 300, 4)];
    const b = [source("BF16", 260, 5)];
    const r = reader({ a, b });
    const m = new Fp8Maker(pool, r.rowsOf);
    const [av, bv, as, bs] = await Promise.all([
      m.make(weight("a", "values", 300), ckpt),
      m.make(weight("b", "values", 260), ckpt),
      m.make(weight("a", "scales", 300), ckpt),
      m.make(weight("b", "scales", 260), ckpt),
    ]);
    expect(Buffer.from(av!).equals(expected(a).values)).toBe(true);
    expect(Buffer.from(as!).equals(expected(a).scales)).toBe(true);
    expect(Buffer.from(bv!).equals(expected(b).values)).toBe(true);
    expect(Buffer.from(bs!).equals(expected(b).scales)).toBe(true);
    expect(r.asked).toEqual(["a", "b"]);
  });

  it("null for a weight that is not FP8 from source rows, without asking for rows (or when there are none)", async () => {
    const r = reader({ w: [source("F16", 4, 6)] });
    const m = new Fp8Maker(pool, r.rowsOf);
    expect(await m.make(weight("w", "values", 4, "w", "int8"), ckpt)).toBeNull();
    expect(
      await m.make({ ...weight("w", "values", 4), recipe: { kind: "constant", data: [1] } }, ckpt),
    ).toBeNull();
    expect(r.asked).toEqual([]);
    // no rows for it: null, and not remembered (asked again the next time)
    expect(await m.make(weight("none", "values", 4), ckpt)).toBeNull();
    expect(await m.make(weight("none", "scales", 4), ckpt)).toBeNull();
    expect(r.asked).toEqual(["none", "none"]);
  });

  it("rows in ordinary memory go to the workers as shared copies; shared rows as they are", async () => {
    const plain = [source("F32", 100, 7, false), source("F16", 100, 8, false), source("BF16", 100, 9)];
    const want = expected(plain);
    const m = new Fp8Maker(pool, reader({ w: plain }).rowsOf);
    const values = await m.make(weight("w", "values", 300), ckpt);
    expect(Buffer.from(values!).equals(want.values)).toBe(true);
    expect(Buffer.from((await m.make(weight("w", "scales", 300), ckpt))!).equals(want.scales)).toBe(true);
    const handed = pool.asked[pool.asked.length - 1];
    expect(
      handed.map((p) => [
        p.dtype,
        p.rows,
        p.data.constructor.name,
        p.data.buffer instanceof SharedArrayBuffer,
      ]),
    ).toEqual([
      ["F32", 100, "Float32Array", true],
      ["F16", 100, "Uint16Array", true],
      ["BF16", 100, "Uint16Array", true],
    ]);
    for (let i = 0; i < 3; i++) expect([...handed[i].data]).toEqual([...plain[i].data]);
    expect(handed[2]).toBe(plain[2]); // already shared: not copied
  });

  it("a shape the graph does not expect is refused; an empty weight is empty", async () => {
    const m = new Fp8Maker(pool, reader({ w: [source("F16", 300, 10)], e: [] }).rowsOf);
    const v = weight("w", "values", 300);
    await expect(m.make({ ...v, shape: [300, K + 1] }, ckpt)).rejects.toThrow(
      `weight w.values: recipe produced [300,${K}] but the graph expects [300,${K + 1}]`,
    );
    const empty = weight("e", "values", 0);
    expect((await m.make({ ...empty, shape: [0, 0] }, ckpt))!.length).toBe(0);
    expect((await m.make(weight("e", "scales", 0), ckpt))!.length).toBe(0);
  });

  it("values and scales buffers come from the buffer pool, and hold() gives back exactly those, once", async () => {
    const buffers = new BufferPool();
    const parked = new SharedArrayBuffer(300 * K);
    buffers.give(parked);
    const m = new Fp8Maker(pool, reader({ w: [source("BF16", 300, 11)] }).rowsOf, buffers);
    const values = (await m.make(weight("w", "values", 300), ckpt))!;
    const scales = (await m.make(weight("w", "scales", 300), ckpt))!;
    expect(values.buffer).toBe(parked); // the idle buffer of that size, taken
    expect(scales.buffer).toBeInstanceOf(SharedArrayBuffer);
    expect(scales.byteLength).toBe(4 * 300);
    // not the maker's: nothing to give back
    expect(m.hold(new Uint8Array(16))).toBeUndefined();
    expect(m.hold(new Uint8Array(new SharedArrayBuffer(4 * 300)))).toBeUndefined();
    const giveValues = m.hold(values);
    const giveScales = m.hold(scales);
    expect(giveValues).toBeTypeOf("function");
    expect(giveScales).toBeTypeOf("function");
    expect(m.hold(values)).toBeUndefined(); // held already
    expect(buffers.take(4 * 300)).not.toBe(scales.buffer); // still held: a fresh one
    giveScales!();
    giveValues!();
    expect(buffers.take(4 * 300)).toBe(scales.buffer);
    expect(buffers.take(300 * K)).toBe(parked);
  });

  it("close() closes its pool", async () => {
    const p = new Recording(1);
    const m = new Fp8Maker(p, reader({}).rowsOf);
    await m.close();
    expect(p.closed).toBe(1);
  });
});
