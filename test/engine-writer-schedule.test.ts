// The engine writer (src/engine/writer.ts) called directly on hand-built ranks and a checkpoint the test
// lays out and watches (which tensor is read when, into which buffer, by the prefetcher or synchronously):
// the exact bytes of each rank file and config.json; each source read once, ahead of its use, for all the
// ranks that share it; the read-ahead bound (64 MiB), the wait while more than 128 MiB are held or in
// flight (a buffer given back before the next tensor is read into it); worker threads only from 64 MiB of
// weights, all of them gone when the build ends; and the failures (exact message, no file left open).
// The large cases use sparse checkpoint files (zeros cost no disk reads) and remove what they write.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { createRequire, syncBuiltinESMExports } from "node:module";
import { availableParallelism } from "node:os";
import * as path from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import type { Checkpoint } from "../src/checkpoint/checkpoint.ts";
import type { Dtype } from "../src/checkpoint/dtype.ts";
import type { ModelFacts } from "../src/dsl/model.ts";
import { BuildConfig, type EngineConfig, FORMAT_VERSION } from "../src/engine/format.ts";
import { HASH_CHUNK_BYTES } from "../src/engine/hash.ts";
import { buildHeader, type RankProgram } from "../src/engine/header.ts";
import { writeEngine } from "../src/engine/writer.ts";
import type { Graph, Value } from "../src/ir/types.ts";
import type { Transform } from "../src/weights/recipe.ts";
import { tmpDir as newTmpDir } from "./fixtures.ts";

const MiB = 1 << 20;
const made: string[] = [];
const tmpDir = () => {
  const d = newTmpDir("tsllm-writer-");
  made.push(d);
  return d;
};
// Removed after each case (the large ones write some 300 MB each; a mutation run repeats them many times).
afterEach(() => {
  for (const d of made.splice(0)) fs.rmSync(d, { recursive: true, force: true });
});

const cjsFs = createRequire(import.meta.url)("node:fs") as typeof fs;
const realRead = cjsFs.read;
afterEach(() => {
  cjsFs.read = realRead;
  syncBuiltinESMExports();
});

const threads = () => fs.readdirSync("/proc/self/task").length;
const openFds = () => fs.readdirSync("/proc/self/fd").length;
beforeAll(async () => {
  await fs.promises.readFile(import.meta.filename); // libuv's pool started before threads are counted
});

function lcg(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) b[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return b;
}

interface Tensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** The bytes, or "zeros" for a large tensor left as a hole of the sparse file. */
  data: Buffer | "zeros";
}

interface Watched {
  ckpt: Checkpoint;
  /** What happened, in order: `read X` (the prefetcher starts reading X), `sync X` (a synchronous read),
   * `info X` (anything asking for X's description: the prefetcher before reading, materialisation after),
   * `progress N`. */
  log: string[];
  /** The buffer each tensor was read into by the prefetcher. */
  bufferOf: Map<string, ArrayBufferLike>;
  bytesOf: (name: string) => Buffer;
}

/** One checkpoint file holding the tensors at 4 KiB aligned offsets, served by a Checkpoint that logs. */
function checkpoint(dir: string, tensors: Tensor[]): Watched {
  const file = path.join(dir, "model.bin");
  const infos = new Map<string, { dtype: Dtype; shape: number[]; byteLength: number; fileOffset: number }>();
  let off = 0;
  const fd = fs.openSync(file, "w");
  for (const t of tensors) {
    const byteLength =
      t.shape.reduce((a, b) => a * b, 1) * (t.dtype === "F32" ? 4 : t.dtype === "U8" ? 1 : 2);
    if (t.data !== "zeros") {
      expect(t.data.length).toBe(byteLength);
      fs.writeSync(fd, t.data, 0, byteLength, off);
    }
    infos.set(t.name, { dtype: t.dtype, shape: t.shape, byteLength, fileOffset: off });
    off = Math.ceil((off + byteLength) / 4096) * 4096;
  }
  fs.ftruncateSync(fd, off);
  fs.closeSync(fd);
  const log: string[] = [];
  const bufferOf = new Map<string, ArrayBufferLike>();
  const bytesOf = (name: string) => {
    const i = infos.get(name)!;
    const b = Buffer.alloc(i.byteLength);
    const f = fs.openSync(file, "r");
    fs.readSync(f, b, 0, i.byteLength, i.fileOffset);
    fs.closeSync(f);
    return b;
  };
  const nameAt = (pos: number) =>
    [...infos].find(([, i]) => pos >= i.fileOffset && pos < i.fileOffset + i.byteLength)?.[0];
  cjsFs.read = ((fdr: number, into: Uint8Array, ...rest: unknown[]) => {
    let target = "";
    try {
      target = fs.readlinkSync(`/proc/self/fd/${fdr}`);
    } catch {}
    if (target === file) {
      const n = nameAt(rest[2] as number)!;
      if (!bufferOf.has(n)) {
        log.push(`read ${n}`);
        bufferOf.set(n, into.buffer);
      }
      expect(into.buffer).toBe(bufferOf.get(n)); // every part of a tensor into its one buffer
    }
    return (realRead as (...a: unknown[]) => void)(fdr, into, ...rest);
  }) as typeof fs.read;
  syncBuiltinESMExports();
  const ckpt: Checkpoint = {
    dir,
    names: () => [...infos.keys()].sort(),
    has: (n) => infos.has(n),
    info: (n) => {
      log.push(`info ${n}`);
      const i = infos.get(n);
      if (!i) throw new Error(`no tensor ${n}`);
      return { ...i, file };
    },
    read: (n) => {
      log.push(`sync ${n}`);
      return new Uint8Array(bytesOf(n));
    },
    readF32: () => {
      throw new Error("not used by the writer");
    },
    close: () => {},
  };
  return { ckpt, log, bufferOf, bytesOf };
}

type Part = { name: string; shape: number[]; transforms?: Transform[] };
const fromCkpt = (
  id: number,
  name: string,
  dtype: Value["dtype"],
  shape: number[],
  parts: Part[],
  transforms: Transform[] = [],
): Value => ({
  id,
  name,
  dtype,
  shape,
  kind: "weight",
  recipe: {
    kind: "checkpoint",
    parts: parts.map((p) => ({ ...p, transforms: p.transforms ?? [] })),
    transforms,
    init: { mean: 0, scale: 0.02 },
  },
});
const constant = (id: number, name: string, data: number[], shape = [data.length]): Value => ({
  id,
  name,
  dtype: "f32",
  shape,
  kind: "weight",
  recipe: { kind: "constant", data },
});

/** A rank whose program is just its weights, each a graph output (so live and in the header). */
function rank(r: number, weights: Value[]): RankProgram {
  const graph: Graph = {
    values: new Map(weights.map((v) => [v.id, v])),
    nodes: [],
    inputs: {},
    outputs: Object.fromEntries(weights.map((v) => [v.name, v.id])),
    meta: { numLayers: 0, numKvHeads: 1, headDim: 4 },
    nextId: 1000,
  };
  return { rank: r, graph };
}

const FACTS: ModelFacts = {
  vocabSize: 8,
  numLayers: 0,
  numHeads: 1,
  numKvHeads: 1,
  headDim: 4,
  hiddenSize: 4,
  maxPositionEmbeddings: 8,
  eosTokenIds: [1],
};
const buildOf = (extra: Record<string, unknown> = {}) =>
  BuildConfig.parse({
    ...{ sm: 90, tp: 1, dtype: "bf16", kv_cache_dtype: "bf16" },
    ...{ max_batch_size: 1, max_seq_len: 8, max_num_tokens: 8, tokens_per_block: 32 },
    ...{ random_weights: false, seed: 0 },
    ...extra,
  });

interface Run {
  config: EngineConfig;
  out: string;
  /** Threads more than before the build, at most, seen from the checkpoint's and progress callbacks. */
  extraThreads: number;
  /** Threads more than before, once the build returned. */
  threadsLeft: number;
}

async function write(
  w: Watched | null,
  ranks: RankProgram[],
  build: BuildConfig,
  extra: { onProgress?: (d: number, t: number, n: string) => void } = {},
): Promise<Run> {
  const out = path.join(tmpDir(), "eng");
  w?.log.splice(0); // each build's own
  w?.bufferOf.clear();
  const before = threads();
  let extraThreads = 0;
  const see = () => {
    extraThreads = Math.max(extraThreads, threads() - before);
  };
  const ckpt = w && {
    ...w.ckpt,
    info: (n: string) => {
      see();
      return w.ckpt.info(n);
    },
  };
  const config = await writeEngine({
    outDir: out,
    ranks,
    build,
    model: { architecture: "hand" },
    facts: FACTS,
    checkpoint: ckpt,
    onProgress: (d, t, n) => {
      see();
      w?.log.push(`progress ${d}`);
      extra.onProgress?.(d, t, n);
    },
  });
  return { config, out, extraThreads, threadsLeft: threads() - before };
}

/** The rank file the format describes: preamble, header JSON, zeros to 4 KiB, each weight at its offset. */
function expectedRankFile(p: RankProgram, build: BuildConfig, bytes: Map<string, Uint8Array>): Buffer {
  const header = buildHeader(p, build);
  const json = Buffer.from(JSON.stringify(header));
  const data = Math.ceil((24 + json.length) / 4096) * 4096;
  const end = Math.max(data, ...header.weights.map((w) => data + w.offset + w.nbytes));
  const b = Buffer.alloc(end);
  b.write("TSLLMENG", 0, "latin1");
  b.writeUInt32LE(FORMAT_VERSION, 8);
  b.writeBigUInt64LE(BigInt(json.length), 16);
  json.copy(b, 24);
  for (const w of header.weights) {
    const v = p.graph.values.get(w.value)!;
    if (w.random) continue;
    const want = bytes.get(v.name)!;
    expect(want.length).toBe(w.nbytes);
    b.set(want, data + w.offset);
  }
  return b;
}

/** SHA-256 over the SHA-256 of each 16 MiB chunk (src/engine/hash.ts), written out. */
function chunkedSha(b: Uint8Array): string {
  const outer = createHash("sha256");
  for (let o = 0; o < b.length || o === 0; o += HASH_CHUNK_BYTES)
    outer.update(
      createHash("sha256")
        .update(b.subarray(o, o + HASH_CHUNK_BYTES))
        .digest(),
    );
  return outer.digest("hex");
}

const f32Bytes = (xs: number[]) => Buffer.from(Float32Array.from(xs).buffer);

describe("writeEngine on hand-built ranks", () => {
  it("writes each rank's bytes exactly; each source read once, ahead, by the prefetcher, for every rank", async () => {
    const box = tmpDir();
    const A = lcg(4 * 6 * 2, 1); // bf16 [4, 6]: rank 0 takes rows 0-1, rank 1 rows 2-3
    const B = lcg(3 * 2 * 2, 2); // bf16 [3, 2]: both ranks, whole
    const C = lcg(5 * 2 * 2, 3); // bf16 [5, 2]: rank 0 only, concatenated with B
    const w = checkpoint(box, [
      { name: "A", dtype: "BF16", shape: [4, 6], data: A },
      { name: "B", dtype: "BF16", shape: [3, 2], data: B },
      { name: "C", dtype: "BF16", shape: [5, 2], data: C },
    ]);
    const rows = (start: number, end: number): Transform[] => [{ op: "slice", axis: 0, start, end }];
    const r0 = rank(0, [
      fromCkpt(1, "a", "bf16", [2, 6], [{ name: "A", shape: [4, 6], transforms: rows(0, 2) }]),
      fromCkpt(2, "b", "bf16", [3, 2], [{ name: "B", shape: [3, 2] }]),
      constant(3, "k", [1.5, -2, 3]),
      fromCkpt(
        4,
        "bc",
        "bf16",
        [8, 2],
        [
          { name: "B", shape: [3, 2] },
          { name: "C", shape: [5, 2] },
        ],
      ),
    ]);
    // Rank 1 has fewer weights than rank 0: the lock step skips what it lacks.
    const r1 = rank(1, [
      fromCkpt(1, "a", "bf16", [2, 6], [{ name: "A", shape: [4, 6], transforms: rows(2, 4) }]),
      fromCkpt(2, "b", "bf16", [3, 2], [{ name: "B", shape: [3, 2] }]),
    ]);
    const build = buildOf({ tp: 2 });
    const fds = openFds();
    const { config, out, extraThreads, threadsLeft } = await write(w, [r0, r1], build);

    const want0 = new Map<string, Uint8Array>([
      ["a", A.subarray(0, 24)],
      ["b", B],
      ["k", f32Bytes([1.5, -2, 3])],
      ["bc", Buffer.concat([B, C])],
    ]);
    const want1 = new Map<string, Uint8Array>([
      ["a", A.subarray(24, 48)],
      ["b", B],
    ]);
    const files = [expectedRankFile(r0, build, want0), expectedRankFile(r1, build, want1)];
    for (const [i, f] of files.entries())
      expect(fs.readFileSync(path.join(out, `rank${i}.engine`)).equals(f)).toBe(true);
    expect(config).toEqual({
      format_version: FORMAT_VERSION,
      model: { architecture: "hand" },
      facts: FACTS,
      build,
      ranks: files.map((f, i) => ({
        file: `rank${i}.engine`,
        bytes: f.length,
        hash: { chunk_bytes: HASH_CHUNK_BYTES, sha256: chunkedSha(f) },
      })),
    });
    expect(fs.readFileSync(path.join(out, "config.json"), "utf8")).toBe(
      `${JSON.stringify(config, null, 2)}\n`,
    );
    expect(fs.readdirSync(out).sort()).toEqual(["config.json", "rank0.engine", "rank1.engine"]);

    // Every source read once by the prefetcher, all three (far below the read-ahead bound) before the
    // first weight is made, in the order of their first use (a of rank 0, a of rank 1, b, …, bc); none
    // read synchronously, not even B, which three weights of two ranks use.
    const reads = w.log.filter((e) => e.startsWith("read ") || e.startsWith("sync "));
    expect(reads).toEqual(["read A", "read B", "read C"]);
    expect(w.log.slice(0, 6)).toEqual(["info A", "read A", "info B", "read B", "info C", "read C"]);
    // Small builds start no thread, and leave none; nor a file open.
    expect(extraThreads).toBe(0);
    expect(threadsLeft).toBe(0);
    expect(openFds()).toBe(fds);
  });

  it("reads ahead while less than 64 MiB is held: a tensor is released after its last use", async () => {
    // Four f32 tensors of 32 MiB (f32 weights are converted into buffers of their own, so a source is given
    // back as soon as it is released): 64 MiB held stops the read-ahead, each release lets the next one go.
    const box = tmpDir();
    const n = (32 * MiB) / 4;
    const names = ["T0", "T1", "T2", "T3"];
    const w = checkpoint(
      box,
      names.map((name) => ({ name, dtype: "F32", shape: [n], data: "zeros" })),
    );
    const r = rank(
      0,
      names.map((name, i) => fromCkpt(i + 1, name.toLowerCase(), "f32", [n], [{ name, shape: [n] }])),
    );
    await write(w, [r], buildOf({ dtype: "fp32", kv_cache_dtype: "fp32" }));
    const order = w.log.filter(
      (e) => e.startsWith("read ") || e.startsWith("sync ") || e.startsWith("info "),
    );
    // info X right after read X's fetch is the weight being made (the fetch asks first, then reads).
    const events: string[] = [];
    for (let i = 0; i < order.length; i++) {
      const [kind, name] = order[i].split(" ");
      if (kind === "info" && order[i + 1] === `read ${name}`) continue;
      const e = kind === "info" ? `make ${name}` : order[i];
      if (events.at(-1) !== e) events.push(e);
    }
    expect(events).toEqual([
      "read T0",
      "read T1",
      "make T0",
      "read T2",
      "make T1",
      "read T3",
      "make T2",
      "make T3",
    ]);
  });

  it("waits while more than 128 MiB is in flight before reading the next tensor", async () => {
    // A 144 MiB f32 weight (its converted bytes are in flight until written and hashed): the next tensor is
    // read once at most 128 MiB of the file is not yet on the disk.
    const box = tmpDir();
    const n = (144 * MiB) / 4;
    const w = checkpoint(box, [
      { name: "big", dtype: "F32", shape: [n], data: "zeros" },
      { name: "next", dtype: "F32", shape: [4], data: f32Bytes([1, 2, 3, 4]) },
    ]);
    const r = rank(0, [
      fromCkpt(1, "big", "f32", [n], [{ name: "big", shape: [n] }]),
      fromCkpt(2, "next", "f32", [4], [{ name: "next", shape: [4] }]),
    ]);
    const { config } = await write(w, [r], buildOf({ dtype: "fp32", kv_cache_dtype: "fp32" }));
    const i = w.log.indexOf("read next");
    const done = w.log
      .slice(0, i)
      .filter((e) => e.startsWith("progress "))
      .map((e) => Number(e.split(" ")[1]));
    const pushed = 4096 + 144 * MiB; // header and the big weight
    expect(config.ranks[0].bytes).toBe(pushed + 16);
    expect(done.length).toBeGreaterThan(0);
    expect(Math.max(...done)).toBeGreaterThanOrEqual(pushed - 128 * MiB);
  });

  it("goes on with exactly 128 MiB in flight, or exactly 128 MiB of sources held", async () => {
    // 4096 bytes of header and 128 MiB - 4096 of f32 weight: exactly 128 MiB pushed, none written yet; then
    // a bf16 weight that is the first half of a 128 MiB tensor (held whole, 64 MiB in flight). Neither waits:
    // the next tensor is read before any byte reached the disk (a write of 64 MiB or more takes far longer).
    const box = tmpDir();
    const n = (128 * MiB - 4096) / 4;
    const m = (128 * MiB) / 2 / 1024;
    const w = checkpoint(box, [
      { name: "F", dtype: "F32", shape: [n], data: "zeros" },
      { name: "G", dtype: "F32", shape: [4], data: f32Bytes([1, 2, 3, 4]) },
      { name: "H", dtype: "BF16", shape: [m, 1024], data: "zeros" },
      { name: "I", dtype: "BF16", shape: [4], data: lcg(8, 4) },
    ]);
    const half: Transform[] = [{ op: "slice", axis: 0, start: 0, end: m / 2 }];
    const f32 = rank(0, [
      fromCkpt(1, "f", "f32", [n], [{ name: "F", shape: [n] }]),
      fromCkpt(2, "g", "f32", [4], [{ name: "G", shape: [4] }]),
    ]);
    await write(w, [f32], buildOf({ dtype: "fp32", kv_cache_dtype: "fp32" }));
    expect(w.log.slice(0, w.log.indexOf("read G")).some((e) => e.startsWith("progress "))).toBe(false);
    const bf16 = rank(0, [
      fromCkpt(1, "h", "bf16", [m / 2, 1024], [{ name: "H", shape: [m, 1024], transforms: half }]),
      fromCkpt(2, "i", "bf16", [4], [{ name: "I", shape: [4] }]),
    ]);
    await write(w, [bf16], buildOf());
    expect(w.log.filter((e) => e.startsWith("read "))).toEqual(["read H", "read I"]);
    expect(w.log.slice(0, w.log.indexOf("read I")).some((e) => e.startsWith("progress "))).toBe(false);
  });

  it("gives a held source buffer back before reading the next tensor, the unhashed tail copied out", async () => {
    // bf16 weights are written as views of the source buffer. 130 MiB held: the writer waits until that
    // buffer is free again (written, hashed, the last partial hash chunk copied), so the next 130 MiB
    // tensor is read into the same buffer. Rank 1 writes nothing meanwhile (its file idle).
    const box = tmpDir();
    const n = (130 * MiB) / 2;
    const w = checkpoint(box, [
      { name: "X", dtype: "BF16", shape: [n], data: "zeros" },
      { name: "Y", dtype: "BF16", shape: [n], data: "zeros" },
    ]);
    const r0 = rank(0, [
      fromCkpt(1, "x", "bf16", [n], [{ name: "X", shape: [n] }]),
      fromCkpt(2, "y", "bf16", [n], [{ name: "Y", shape: [n] }]),
    ]);
    const r1 = rank(1, [constant(1, "x", [1])]);
    const { config } = await write(w, [r0, r1], buildOf({ tp: 2 }));
    expect(w.log.filter((e) => e.startsWith("read "))).toEqual(["read X", "read Y"]);
    expect(w.bufferOf.get("Y")).toBe(w.bufferOf.get("X"));
    expect(config.ranks[0].bytes).toBe(4096 + alignUp256(130 * MiB) + 130 * MiB);
  });

  it("starts worker threads from 64 MiB of weights (FP8 quantisers for --quant fp8 only), all gone at the end", async () => {
    const box = tmpDir();
    const hashWorkers = Math.max(1, Math.min(4, availableParallelism() - 1));
    const fp8Workers = availableParallelism();
    const W = lcg(256 * 256 * 2, 5);
    const fill = (64 * MiB - 256 * 256 - 256 * 4) / 2;
    const w = checkpoint(box, [
      { name: "W", dtype: "BF16", shape: [256, 256], data: W },
      { name: "Z", dtype: "BF16", shape: [(64 * MiB) / 2], data: "zeros" },
    ]);
    const q = (output: "values" | "scales"): Transform[] => [{ op: "quantize", scheme: "fp8", output }];
    const fp8Rank = (zeros: number) =>
      rank(0, [
        fromCkpt(1, "w", "fp8e4m3", [256, 256], [{ name: "W", shape: [256, 256] }], q("values")),
        fromCkpt(2, "w.scale", "f32", [256], [{ name: "W", shape: [256, 256] }], q("scales")),
        ...(zeros
          ? [
              fromCkpt(
                3,
                "z",
                "bf16",
                [zeros],
                [
                  {
                    name: "Z",
                    shape: [(64 * MiB) / 2],
                    transforms: [{ op: "slice", axis: 0, start: 0, end: zeros }],
                  },
                ],
              ),
            ]
          : []),
      ]);
    const plain = rank(0, [
      fromCkpt(1, "z", "bf16", [(64 * MiB) / 2], [{ name: "Z", shape: [(64 * MiB) / 2] }]),
    ]);

    // Exactly 64 MiB: hash workers and the write worker; with --quant fp8 the quantisers too.
    let run = await write(w, [plain], buildOf());
    expect([run.extraThreads, run.threadsLeft]).toEqual([hashWorkers + 1, 0]);
    const fp8 = buildOf({ quant: "fp8" });
    run = await write(w, [fp8Rank(fill)], fp8);
    expect([run.extraThreads, run.threadsLeft]).toEqual([hashWorkers + 1 + fp8Workers, 0]);
    // The FP8 weights as the main thread makes them, at their offsets.
    const { materializeWeight } = await import("../src/weights/materialize.ts");
    const bytesOf = (r: RankProgram) =>
      new Map([...r.graph.values.values()].map((v) => [v.name, materializeWeight(v, w.ckpt)]));
    let r = fp8Rank(fill);
    expect(
      fs.readFileSync(path.join(run.out, "rank0.engine")).equals(expectedRankFile(r, fp8, bytesOf(r))),
    ).toBe(true);
    // 2 bytes less: none (the small build's case above, for --quant fp8).
    r = fp8Rank(fill - 1);
    run = await write(w, [r], fp8);
    expect([run.extraThreads, run.threadsLeft]).toEqual([0, 0]);
    expect(
      fs.readFileSync(path.join(run.out, "rank0.engine")).equals(expectedRankFile(r, fp8, bytesOf(r))),
    ).toBe(true);
  });

  it("a random-weights build makes no weight: one progress report, of the header, naming none", async () => {
    const box = tmpDir();
    const w = checkpoint(box, [{ name: "A", dtype: "BF16", shape: [2, 2], data: lcg(8, 6) }]);
    const r = rank(0, [fromCkpt(1, "a", "bf16", [2, 2], [{ name: "A", shape: [2, 2] }])]);
    const build = buildOf({ random_weights: true, seed: 3 });
    const calls: [number, number, string][] = [];
    const { out } = await write(w, [r], build, { onProgress: (d, t, n) => calls.push([d, t, n]) });
    expect(calls).toEqual([[0, 0, ""]]);
    expect(
      fs.readFileSync(path.join(out, "rank0.engine")).equals(expectedRankFile(r, build, new Map())),
    ).toBe(true);
    expect(w.log.filter((e) => !e.startsWith("progress "))).toEqual([]);
  });

  it("a weight of other bytes than its header says: refused, nothing left behind, no file open", async () => {
    const box = tmpDir();
    const w = checkpoint(box, [{ name: "A", dtype: "BF16", shape: [2, 2], data: lcg(8, 7) }]);
    const r = rank(0, [
      fromCkpt(1, "a", "bf16", [2, 2], [{ name: "A", shape: [2, 2] }]),
      constant(2, "k", [1, 2, 3], [4]), // 3 values for 4 elements: 12 bytes
    ]);
    const fds = openFds();
    const threadsBefore = threads();
    const parent = tmpDir();
    const out = path.join(parent, "eng");
    await expect(
      writeEngine({ outDir: out, ranks: [r], build: buildOf(), model: {}, facts: FACTS, checkpoint: w.ckpt }),
    ).rejects.toThrowError(/^weight k: 12 bytes, header says 16$/);
    expect(fs.readdirSync(parent)).toEqual([]);
    expect(openFds()).toBe(fds);
    expect(threads()).toBe(threadsBefore);
  });

  it("a rank failing at the end does not close again a finished rank's file (its number reused since)", async () => {
    // rank0 is finished (its file closed), then rank1's write fails. Meanwhile the process opened a file
    // that got rank0's old descriptor number: the failed build must leave that file open.
    const box = tmpDir();
    const w = checkpoint(box, [{ name: "A", dtype: "BF16", shape: [2, 2], data: lcg(8, 8) }]);
    const ranks = [0, 1].map((i) =>
      rank(i, [fromCkpt(1, "a", "bf16", [2, 2], [{ name: "A", shape: [2, 2] }])]),
    );
    const mine = path.join(box, "mine.txt");
    fs.writeFileSync(mine, "mine");
    const fdOf = (base: string) =>
      fs
        .readdirSync("/proc/self/fd")
        .map(Number)
        .find((fd) => {
          try {
            return fs.readlinkSync(`/proc/self/fd/${fd}`).endsWith(`/${base}`);
          } catch {
            return false;
          }
        });
    const fds = openFds();
    let rank0Fd: number | undefined;
    const opened: number[] = [];
    let calls = 0;
    const progress = () => {
      calls++;
      if (calls === 1) {
        rank0Fd = fdOf("rank0.engine"); // written, not yet closed
        return;
      }
      // rank0.engine is closed now: open files until one gets its number (the lowest free one comes first).
      expect(fdOf("rank0.engine")).toBeUndefined();
      for (let k = 0; k < 64 && !opened.includes(rank0Fd!); k++) opened.push(fs.openSync(mine, "r"));
      throw new Error("disk went away");
    };
    await expect(write(w, ranks, buildOf({ tp: 2 }), { onProgress: progress })).rejects.toThrowError(
      /rank1\.engine: disk went away$/,
    );
    expect(calls).toBe(2);
    expect(rank0Fd).toBeDefined();
    expect(opened).toContain(rank0Fd);
    try {
      for (const fd of opened) expect(fs.readlinkSync(`/proc/self/fd/${fd}`)).toBe(mine);
    } finally {
      for (const fd of opened)
        try {
          fs.closeSync(fd);
        } catch {}
    }
    expect(openFds()).toBe(fds);
    // rank0 failing first: rank1, not yet finished, is closed all the same.
    const fail = () => {
      throw new Error("disk went away");
    };
    await expect(write(w, ranks, buildOf({ tp: 2 }), { onProgress: fail })).rejects.toThrowError(
      /rank0\.engine: disk went away$/,
    );
    expect(openFds()).toBe(fds);
  });

  it("a weight without a recipe: refused with its name", async () => {
    const parent = tmpDir();
    const v: Value = { id: 1, name: "w", dtype: "f32", shape: [2], kind: "weight" };
    await expect(
      writeEngine({
        outDir: path.join(parent, "eng"),
        ranks: [rank(0, [v])],
        build: buildOf(),
        model: {},
        facts: FACTS,
        checkpoint: null,
      }),
    ).rejects.toThrowError(/^weight w has no recipe$/);
    expect(fs.readdirSync(parent)).toEqual([]);
  });
});

function alignUp256(n: number): number {
  return Math.ceil(n / 256) * 256;
}
