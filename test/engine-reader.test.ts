// src/engine/reader.ts on engine directories and rank files written byte by byte here (docs/engine-format.md),
// each in its own temporary folder: every refusal as one line naming the file and what is wrong, and the
// values read back (header, data offset, weight bytes, the streamed weights).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { HASH_CHUNK_BYTES } from "../src/engine/hash.ts";
import {
  EngineError,
  type EngineRank,
  openEngine,
  readRankHeader,
  readWeightBytes,
  streamRankWeights,
  verifyEngine,
} from "../src/engine/reader.ts";
import { tmpDir } from "./fixtures.ts";
import { thrown } from "./thrown.ts";

type Json = Record<string, unknown>;

/** A valid header: an input, an activation, a stored f32 [4, 4] weight, a stored f16 [T≤3] weight, a random one. */
function header(over: Json = {}): Json {
  return {
    format_version: 1,
    rank: 0,
    tp: 1,
    sm: 90,
    dtype: "fp32",
    limits: { max_batch_size: 1, max_seq_len: 8, max_num_tokens: 8 },
    kv_cache: { num_layers: 1, num_kv_heads: 1, head_dim: 4, dtype: "fp32", tokens_per_block: 32 },
    values: [
      { id: 0, name: "x", dtype: "f32", shape: [{ sym: "T", max: 8 }, 4], kind: "input" },
      { id: 1, name: "w", dtype: "f32", shape: [4, 4], kind: "weight" },
      { id: 2, name: "b", dtype: "f16", shape: [{ sym: "T", max: 3 }], kind: "weight" },
      { id: 3, name: "y", dtype: "f32", shape: [{ sym: "T", max: 8 }, 4], kind: "activation" },
      { id: 5, name: "r", dtype: "f32", shape: [1000], kind: "weight" },
    ],
    inputs: { x: 0 },
    outputs: { y: 3 },
    weights: [
      { value: 1, offset: 0, nbytes: 64, random: null },
      { value: 2, offset: 256, nbytes: 6, random: null },
      { value: 5, offset: 0, nbytes: 0, random: { seed: 1, mean: 0, scale: 0.02 } },
    ],
    nodes: [{ op: "matmul", inputs: [0, 1, null], outputs: [3], attrs: { k: [1, "a"] } }],
    arena: { bytes: 0, offsets: {} },
    ...over,
  };
}

const DATA = Uint8Array.from({ length: 262 }, (_, i) => (i * 37 + 11) & 255); // the weights' 262 bytes

/** A rank file: preamble, header JSON, zero padding to 4096, then `data`. */
function rankBytes(
  o: {
    head?: Json | string | Buffer;
    data?: Uint8Array;
    magic?: string;
    version?: number;
    len?: bigint;
  } = {},
): Buffer {
  const h = o.head ?? header();
  const json = Buffer.isBuffer(h) ? h : Buffer.from(typeof h === "string" ? h : JSON.stringify(h));
  const pre = Buffer.alloc(24);
  pre.write(o.magic ?? "TSLLMENG", 0, "latin1");
  pre.writeUInt32LE(o.version ?? 1, 8);
  pre.writeBigUInt64LE(o.len ?? BigInt(json.length), 16);
  const dataOffset = Math.ceil((24 + json.length) / 4096) * 4096;
  const out = Buffer.alloc(dataOffset + (o.data ?? DATA).length);
  pre.copy(out, 0);
  json.copy(out, 24);
  Buffer.from(o.data ?? DATA).copy(out, dataOffset);
  return out;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

function config(ranks: { file: string; bytes: number; sha256: string }[], over: Json = {}): Json {
  return {
    format_version: 1,
    model: { name: "toy" },
    facts: {
      ...{ vocabSize: 10, numLayers: 1, numHeads: 1, numKvHeads: 1, headDim: 4, hiddenSize: 4 },
      ...{ maxPositionEmbeddings: 8, eosTokenIds: [2] },
    },
    build: {
      ...{ sm: 90, tp: ranks.length, dtype: "fp32", kv_cache_dtype: "fp32" },
      ...{ max_batch_size: 1, max_seq_len: 8, max_num_tokens: 8, tokens_per_block: 32 },
      ...{ random_weights: false, seed: 0 },
    },
    ranks,
    ...over,
  };
}

/** An engine folder with these rank files (config.json naming each with its size and SHA-256). */
function engineDir(files: Buffer[] = [rankBytes()], over: Json = {}): string {
  const dir = tmpDir();
  const ranks = files.map((b, i) => {
    fs.writeFileSync(path.join(dir, `rank${i}.engine`), b);
    return { file: `rank${i}.engine`, bytes: b.length, sha256: sha(b) };
  });
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(config(ranks, over)));
  return dir;
}

/** The one-line message of the EngineError `f` throws. */
const refusal = (f: () => unknown): string => thrown(f, EngineError).message;

function rankFile(b: Buffer): string {
  const file = path.join(tmpDir(), "rank0.engine");
  fs.writeFileSync(file, b);
  return file;
}

describe("openEngine", () => {
  it("reads a valid engine: its config, each rank's header, data offset and config.json entry", () => {
    const two = rankBytes({ head: header({ rank: 1, tp: 2 }) });
    const dir = engineDir([rankBytes({ head: header({ tp: 2 }) }), two]);
    const e = openEngine(dir);
    expect(e.dir).toBe(dir);
    expect(e.config.model).toEqual({ name: "toy" });
    expect(e.config.build.quant).toBe("none"); // the schema's defaults filled in
    expect(e.ranks.map((r) => r.file)).toEqual([
      path.join(dir, "rank0.engine"),
      path.join(dir, "rank1.engine"),
    ]);
    expect(e.ranks.map((r) => r.header.rank)).toEqual([0, 1]);
    expect(e.ranks[0].dataOffset).toBe(4096);
    expect(e.ranks[1].entry).toEqual({ file: "rank1.engine", bytes: two.length, sha256: sha(two) });
    expect(e.ranks[0].header.weights[1]).toEqual({ value: 2, offset: 256, nbytes: 6, random: null });
    verifyEngine(e);
  });

  // "" joined to "config.json" read the current folder's (a Hugging Face folder's would be taken for an engine).
  it('"" is refused by name, not read as the current folder', () => {
    expect(refusal(() => openEngine(""))).toBe('engine directory "": an empty path (an unset variable?)');
    expect(refusal(() => openEngine("  "))).toBe('engine directory "": an empty path (an unset variable?)');
  });

  it("a folder without config.json: not an engine, or an ONNX export", () => {
    const dir = tmpDir();
    expect(refusal(() => openEngine(dir))).toBe(`${dir}: not an engine directory (no config.json)`);
    fs.writeFileSync(path.join(dir, "onnx.json"), "{}");
    expect(refusal(() => openEngine(dir))).toBe(
      `${dir}: an ONNX export (onnx.json), not an engine; load it with ONNX Runtime, or build an engine without --emit onnx`,
    );
  });

  it("config.json that is not JSON, or not an object", () => {
    const dir = tmpDir();
    const cfg = path.join(dir, "config.json");
    fs.writeFileSync(cfg, "{ nope");
    expect(refusal(() => openEngine(dir))).toMatch(
      new RegExp(`^${cfg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: invalid JSON: [^\\n]*JSON`),
    );
    for (const v of ["[]", "null", '"1"', "1"]) {
      fs.writeFileSync(cfg, v);
      expect(refusal(() => openEngine(dir))).toBe(`${cfg}: not an engine config (not a JSON object)`);
    }
  });

  it("a Hugging Face model folder is named as such; with a format_version it is a version question", () => {
    const dir = tmpDir();
    const cfg = path.join(dir, "config.json");
    const hf = `${dir}: a Hugging Face model folder, not an engine; build one first: tsllm-compile MODEL.ts --checkpoint ${dir} --sm N -o ENGINE`;
    fs.writeFileSync(cfg, JSON.stringify({ architectures: ["LlamaForCausalLM"] }));
    expect(refusal(() => openEngine(dir))).toBe(hf);
    fs.writeFileSync(cfg, JSON.stringify({ model_type: "llama" }));
    expect(refusal(() => openEngine(dir))).toBe(hf);
    fs.writeFileSync(cfg, JSON.stringify({ model_type: "llama", format_version: 2 }));
    expect(refusal(() => openEngine(dir))).toBe(
      `${cfg}: engine format version 2, this tsllm reads version 1; rebuild the engine`,
    );
    fs.writeFileSync(cfg, JSON.stringify({ hidden_size: 4 }));
    expect(refusal(() => openEngine(dir))).toBe(`${cfg}: not an engine config (format_version missing)`);
    // a string is not a version (it once read "engine format version 1, this tsllm reads version 1")
    fs.writeFileSync(cfg, JSON.stringify({ format_version: "1" }));
    expect(refusal(() => openEngine(dir))).toBe(
      `${cfg}: not an engine config (format_version "1", not a number)`,
    );
  });

  it("config.json or a rank file that is a folder: named as not a file (not a bare EISDIR)", () => {
    const dir = tmpDir();
    fs.mkdirSync(path.join(dir, "config.json"));
    expect(refusal(() => openEngine(dir))).toBe(`${path.join(dir, "config.json")}: not a file`);
    const eng = engineDir();
    const rank = path.join(eng, "rank0.engine");
    fs.rmSync(rank);
    fs.mkdirSync(rank);
    const c = JSON.parse(fs.readFileSync(path.join(eng, "config.json"), "utf8"));
    c.ranks[0].bytes = fs.statSync(rank).size; // the folder's own size: the size check alone would pass
    fs.writeFileSync(path.join(eng, "config.json"), JSON.stringify(c));
    expect(refusal(() => openEngine(eng))).toBe(`${rank}: not a file`);
    expect(refusal(() => readRankHeader(rank))).toBe(`${rank}: not a file`);
  });

  it("a schema error names the first failing path", () => {
    const dir = engineDir([rankBytes()], { facts: { vocabSize: 10 } });
    const cfg = path.join(dir, "config.json");
    expect(refusal(() => openEngine(dir))).toMatch(
      new RegExp(`^${cfg}: invalid engine config at "facts\\.numLayers": `),
    );
    const bad = engineDir([rankBytes()]);
    const c = JSON.parse(fs.readFileSync(path.join(bad, "config.json"), "utf8"));
    c.ranks[0].file = "../rank0.engine";
    fs.writeFileSync(path.join(bad, "config.json"), JSON.stringify(c));
    expect(refusal(() => openEngine(bad))).toBe(
      `${path.join(bad, "config.json")}: invalid engine config at "ranks.0.file": must be a plain file name in the engine directory`,
    );
  });

  it("a rank entry without a content hash is refused; a chunked hash alone is enough", () => {
    const dir = engineDir();
    const cfg = path.join(dir, "config.json");
    const c = JSON.parse(fs.readFileSync(cfg, "utf8"));
    delete c.ranks[0].sha256;
    fs.writeFileSync(cfg, JSON.stringify(c));
    expect(refusal(() => openEngine(dir))).toBe(
      `${cfg}: invalid engine config at "ranks.0": no content hash`,
    );
    // a chunk size below 1 MiB (1,048,576) is refused before any byte is hashed: a byte a chunk would cost a hash
    // state and a digest per byte of the engine
    for (const bad of [1, (1 << 20) - 1, 0, (1 << 20) + 0.5]) {
      c.ranks[0].hash = { chunk_bytes: bad, sha256: "00" };
      fs.writeFileSync(cfg, JSON.stringify(c));
      expect(refusal(() => openEngine(dir))).toMatch(
        new RegExp(
          `^${cfg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: invalid engine config at "ranks\\.0\\.hash\\.chunk_bytes": `,
        ),
      );
    }
    c.ranks[0].hash = { chunk_bytes: 1 << 20, sha256: "00" };
    fs.writeFileSync(cfg, JSON.stringify(c));
    expect(openEngine(dir).ranks[0].entry).toEqual({
      file: "rank0.engine",
      bytes: c.ranks[0].bytes,
      hash: { chunk_bytes: 1 << 20, sha256: "00" },
    });
  });

  it("a rank file missing, or of another size than config.json says", () => {
    const dir = engineDir([
      rankBytes({ head: header({ tp: 2 }) }),
      rankBytes({ head: header({ rank: 1, tp: 2 }) }),
    ]);
    const r1 = path.join(dir, "rank1.engine");
    const size = fs.statSync(r1).size;
    fs.appendFileSync(r1, "x");
    expect(refusal(() => openEngine(dir))).toBe(
      `${r1}: ${size + 1} bytes, config.json says ${size} (truncated or replaced)`,
    );
    fs.rmSync(r1);
    expect(refusal(() => openEngine(dir))).toBe(`${r1}: missing rank file`);
  });

  it("rank files swapped, copied over another rank, or listed for another tp: refused naming the file", () => {
    // Same sizes, so only the content hash told them apart, and --no-verify skips it: a swapped tp 2 engine ran
    // with every rank's weights misplaced and printed wrong tokens. The headers say which rank each file is.
    const ranks = (tp: number) =>
      Array.from({ length: tp }, (_, i) => rankBytes({ head: header({ rank: i, tp }) }));
    const [r0, r1] = ranks(2);
    const swapped = engineDir([r1, r0]);
    expect(refusal(() => openEngine(swapped))).toBe(
      `${path.join(swapped, "rank0.engine")}: the header says rank 1 of tp 2, config.json lists it as rank 0 of tp 2 (rank files swapped or from another engine)`,
    );
    const copied = engineDir([r0, r0]);
    expect(refusal(() => openEngine(copied))).toBe(
      `${path.join(copied, "rank1.engine")}: the header says rank 0 of tp 2, config.json lists it as rank 1 of tp 2 (rank files swapped or from another engine)`,
    );
    // rank 1 of a tp 4 engine in a tp 2 one
    const other = engineDir([r0, ranks(4)[1]]);
    expect(refusal(() => openEngine(other))).toBe(
      `${path.join(other, "rank1.engine")}: the header says rank 1 of tp 4, config.json lists it as rank 1 of tp 2 (rank files swapped or from another engine)`,
    );
    // config.json listing one rank file of a tp 2 build: the executor would all_reduce half the partial sums
    const short = engineDir([r0], { build: { ...(config([]).build as Json), tp: 2 } });
    expect(refusal(() => openEngine(short))).toBe(
      `${path.join(short, "config.json")}: lists 1 rank files for tp 2`,
    );
    openEngine(engineDir([r0, r1])); // in order: opens
  });

  it("the rank header is checked when the engine is opened", () => {
    const dir = engineDir([rankBytes({ magic: "TSLLMENX" })]);
    expect(refusal(() => openEngine(dir))).toBe(
      `${path.join(dir, "rank0.engine")}: not a tsllm engine (bad magic)`,
    );
  });
});

describe("readRankHeader", () => {
  it("the preamble: size, magic, version, header length (up to the last byte of the file)", () => {
    const f23 = rankFile(Buffer.from("TSLLMENG".padEnd(23, "\0"), "latin1"));
    expect(refusal(() => readRankHeader(f23))).toBe(
      `${f23}: truncated: 23 bytes, shorter than the 24-byte preamble`,
    );
    const f24 = rankFile(rankBytes({ head: Buffer.alloc(0), data: new Uint8Array(0) }).subarray(0, 24));
    expect(refusal(() => readRankHeader(f24))).toMatch(
      /: corrupt engine header \(Unexpected end of JSON input\)$/,
    );
    const magic = rankFile(rankBytes({ magic: "tsllmeng" }));
    expect(refusal(() => readRankHeader(magic))).toBe(`${magic}: not a tsllm engine (bad magic)`);
    const v2 = rankFile(rankBytes({ version: 2 }));
    expect(refusal(() => readRankHeader(v2))).toBe(
      `${v2}: engine format version 2, this tsllm reads version 1; rebuild the engine`,
    );
    const b = rankBytes({ len: 1n << 63n });
    const huge = rankFile(b);
    expect(refusal(() => readRankHeader(huge))).toBe(
      `${huge}: header length ${1n << 63n} is past the end of the file (${b.length} bytes)`,
    );
    // The header running to the very last byte is read (then found not to be JSON); one more byte is too many.
    const len = BigInt(b.length - 24);
    const last = rankFile(rankBytes({ len }));
    expect(refusal(() => readRankHeader(last))).toMatch(new RegExp(`^${last}: corrupt engine header \\(`));
    const past = rankFile(rankBytes({ len: len + 1n }));
    expect(refusal(() => readRankHeader(past))).toBe(
      `${past}: header length ${len + 1n} is past the end of the file (${b.length} bytes)`,
    );
  });

  it("returns the parsed header and the 4096-aligned data offset", () => {
    const file = rankFile(rankBytes());
    const r = readRankHeader(file);
    expect(r.file).toBe(file);
    expect(r.dataOffset).toBe(4096);
    expect(r.header).toEqual(header());
    expect(r.entry).toBeUndefined();
    // A header whose end falls exactly on 4096: the data follows at 4096, not 8192.
    const base = JSON.stringify(header({ pad: "" })).length;
    const exact = JSON.stringify(header({ pad: "p".repeat(4096 - 24 - base) }));
    expect(24 + Buffer.byteLength(exact)).toBe(4096);
    expect(readRankHeader(rankFile(rankBytes({ head: exact }))).dataOffset).toBe(4096);
    const over = exact.replace('"pad":"', '"pad":"p');
    expect(readRankHeader(rankFile(rankBytes({ head: over }))).dataOffset).toBe(8192);
  });

  it("a header that is not UTF-8, not JSON, or not the schema", () => {
    const latin = rankFile(rankBytes({ head: Buffer.from([0x7b, 0xff, 0x7d]) }));
    expect(refusal(() => readRankHeader(latin))).toBe(
      `${latin}: corrupt engine header (The encoded data was not valid for encoding utf-8)`,
    );
    const notJson = rankFile(rankBytes({ head: "{ nope" }));
    expect(refusal(() => readRankHeader(notJson))).toMatch(
      new RegExp(`^${notJson}: corrupt engine header \\([^)\\n]*JSON[^\\n]*\\)$`),
    );
    const schema = rankFile(rankBytes({ head: header({ dtype: "fp8" }) }));
    expect(refusal(() => readRankHeader(schema))).toMatch(
      new RegExp(`^${schema}: invalid engine header at "dtype": `),
    );
    const deep = header();
    (deep.values as Json[])[1].shape = [4, -4];
    const d = rankFile(rankBytes({ head: deep }));
    expect(refusal(() => readRankHeader(d))).toMatch(
      new RegExp(`^${d}: invalid engine header at "values\\.1\\.shape\\.1": `),
    );
  });

  it("value ids the program names must be declared", () => {
    const cases: [Json, string][] = [
      [{ inputs: { x: 0, pos: 9 } }, 'input "pos" names value 9, which is not declared'],
      [{ outputs: { y: 3, z: 4 } }, 'output "z" names value 4, which is not declared'],
      [
        { nodes: [{ op: "add", inputs: [0, null, 7], outputs: [3], attrs: {} }] },
        "node 0 (add) names value 7, which is not declared",
      ],
      [
        {
          nodes: [
            { op: "add", inputs: [0], outputs: [3], attrs: {} },
            { op: "mul", inputs: [3], outputs: [8], attrs: {} },
          ],
        },
        "node 1 (mul) names value 8, which is not declared",
      ],
    ];
    for (const [over, what] of cases) {
      const file = rankFile(rankBytes({ head: header(over) }));
      expect(refusal(() => readRankHeader(file))).toBe(`${file}: invalid engine header: ${what}`);
    }
  });

  it("weight entries: a weight value, nbytes from shape and dtype (symbolic dims at their max), inside the file", () => {
    const w = (weights: Json[]) => header({ weights });
    const stored = { value: 1, offset: 0, nbytes: 64, random: null };
    const cases: [Json, string][] = [
      [w([{ ...stored, value: 0 }]), "weight entry names value 0, which is not a weight"],
      [w([{ ...stored, value: 3 }]), "weight entry names value 3, which is not a weight"],
      [w([{ ...stored, value: 4 }]), "weight entry names value 4, which is not a weight"],
      [
        w([{ ...stored, value: 4, random: { seed: 1, mean: 0, scale: 1 } }]),
        "weight entry names value 4, which is not a weight",
      ],
      [w([{ ...stored, nbytes: 65 }]), 'weight "w" has 65 bytes, its shape and dtype need 64'],
      [
        w([{ value: 2, offset: 256, nbytes: 3, random: null }]),
        'weight "b" has 3 bytes, its shape and dtype need 6',
      ],
      [
        w([{ value: 2, offset: 257, nbytes: 6, random: null }]),
        'weight "b" (6 bytes at 257) is past the end of the file',
      ],
      [w([{ ...stored, offset: 256 }]), 'weight "w" (64 bytes at 256) is past the end of the file'],
    ];
    for (const [head, what] of cases) {
      const file = rankFile(rankBytes({ head }));
      expect(refusal(() => readRankHeader(file))).toBe(`${file}: invalid engine header: ${what}`);
    }
    // Ending on the file's last byte is fine; a random weight is neither sized nor placed.
    const ok = w([
      { value: 2, offset: 256, nbytes: 6, random: null },
      { value: 5, offset: 1 << 30, nbytes: 7, random: { seed: 1, mean: 0, scale: 1 } },
    ]);
    expect(readRankHeader(rankFile(rankBytes({ head: ok }))).header.weights).toHaveLength(2);
    // A file ending right after its header JSON: the data size counts as 0 (not negative), so an empty
    // weight at offset 0 fits and a 64-byte one does not.
    const zero = { id: 6, name: "z", dtype: "f32", shape: [0, 4], kind: "weight" };
    const short = (weights: Json[]) => {
      const head = header({ values: [...(header().values as Json[]), zero], weights });
      return rankFile(rankBytes({ head }).subarray(0, 24 + JSON.stringify(head).length));
    };
    expect(readRankHeader(short([{ value: 6, offset: 0, nbytes: 0, random: null }])).dataOffset).toBe(4096);
    const empty = short([stored]);
    expect(refusal(() => readRankHeader(empty))).toBe(
      `${empty}: invalid engine header: weight "w" (64 bytes at 0) is past the end of the file`,
    );
  });

  it("weights whose bytes overlap are refused, naming both (the loading pass once threw a bare RangeError)", () => {
    // w is [4, 4] f32 (64 bytes at 0); b (6 bytes) placed inside it, then touching its end; an empty weight and a
    // random one may sit anywhere.
    const over = (b: number) =>
      header({
        weights: [
          { value: 1, offset: 0, nbytes: 64, random: null },
          { value: 2, offset: b, nbytes: 6, random: null },
        ],
      });
    const file = rankFile(rankBytes({ head: over(60) }));
    expect(refusal(() => readRankHeader(file))).toBe(
      `${file}: invalid engine header: weights "w" (64 bytes at 0) and "b" (6 bytes at 60) overlap`,
    );
    // listed in the other order: the same refusal (weights are compared in offset order)
    const swapped = header({
      weights: [
        { value: 2, offset: 10, nbytes: 6, random: null },
        { value: 1, offset: 0, nbytes: 64, random: null },
      ],
    });
    const file2 = rankFile(rankBytes({ head: swapped }));
    expect(refusal(() => readRankHeader(file2))).toBe(
      `${file2}: invalid engine header: weights "w" (64 bytes at 0) and "b" (6 bytes at 10) overlap`,
    );
    const touching = rankFile(rankBytes({ head: over(64) }));
    const r = readRankHeader(touching);
    const got: number[][] = [];
    streamRankWeights(r, (_w, bytes) => got.push([...bytes]), { verify: false });
    expect(got).toEqual([[...DATA.subarray(0, 64)], [...DATA.subarray(64, 70)]]);
  });

  it("every dtype's size: fp8e4m3, i8, u8 1 byte, bf16 2, i32 4", () => {
    const sizes: [string, number][] = [
      ["fp8e4m3", 1],
      ["i8", 1],
      ["u8", 1],
      ["bf16", 2],
      ["i32", 4],
      ["f32", 4],
    ];
    for (const [dtype, n] of sizes) {
      const head = header();
      (head.values as Json[])[1].dtype = dtype;
      head.weights = [{ value: 1, offset: 0, nbytes: 16 * n, random: null }];
      expect(readRankHeader(rankFile(rankBytes({ head }))).header.weights[0].nbytes).toBe(16 * n);
      head.weights = [{ value: 1, offset: 0, nbytes: 16 * n + 1, random: null }];
      const file = rankFile(rankBytes({ head }));
      expect(refusal(() => readRankHeader(file))).toBe(
        `${file}: invalid engine header: weight "w" has ${16 * n + 1} bytes, its shape and dtype need ${16 * n}`,
      );
    }
  });
});

describe("readWeightBytes", () => {
  it("reads the bytes at data offset + offset, and refuses a range past the end", () => {
    const r = readRankHeader(rankFile(rankBytes()));
    expect(Buffer.from(readWeightBytes(r, 0, 64)).equals(Buffer.from(DATA.subarray(0, 64)))).toBe(true);
    expect(Buffer.from(readWeightBytes(r, 256, 6)).equals(Buffer.from(DATA.subarray(256, 262)))).toBe(true);
    expect(Buffer.from(readWeightBytes(r, 261, 1))).toEqual(Buffer.from([DATA[261]]));
    expect(readWeightBytes(r, 262, 0)).toHaveLength(0);
    expect(refusal(() => readWeightBytes(r, 261, 2))).toBe(`${r.file}: truncated weight data`);
    expect(refusal(() => readWeightBytes(r, 262, 1))).toBe(`${r.file}: truncated weight data`);
    // Checked before the buffer is sized: a length no allocation could hold is the same refusal.
    expect(refusal(() => readWeightBytes(r, 0, Number.MAX_SAFE_INTEGER))).toBe(
      `${r.file}: truncated weight data`,
    );
  });
});

describe("streamRankWeights", () => {
  it("hands over each stored weight's bytes in offset order, skips random and empty ones, reports progress", () => {
    const head = header({
      values: [
        ...(header().values as Json[]),
        { id: 6, name: "z", dtype: "f32", shape: [0, 4], kind: "weight" },
      ],
      weights: [
        { value: 2, offset: 256, nbytes: 6, random: null },
        { value: 5, offset: 0, nbytes: 0, random: { seed: 1, mean: 0, scale: 1 } },
        { value: 1, offset: 0, nbytes: 64, random: null },
        { value: 6, offset: 128, nbytes: 0, random: null },
      ],
    });
    const dir = engineDir([rankBytes({ head })]);
    const e = openEngine(dir);
    const got: [number, number, Buffer][] = [];
    const progress: [number, number][] = [];
    streamRankWeights(e.ranks[0], (w, b) => got.push([w.value, w.offset, Buffer.from(b)]), {
      onBytes: (d, t) => progress.push([d, t]),
    });
    expect(got).toEqual([
      [1, 0, Buffer.from(DATA.subarray(0, 64))],
      [2, 256, Buffer.from(DATA.subarray(256, 262))],
    ]);
    const size = fs.statSync(path.join(dir, "rank0.engine")).size;
    expect(progress).toEqual([[size, size]]);
  });

  it("checks the content hash unless verify is false, and only with a config.json entry", () => {
    const dir = engineDir();
    const e = openEngine(dir);
    const file = path.join(dir, "rank0.engine");
    const b = fs.readFileSync(file);
    b[b.length - 1] ^= 1;
    fs.writeFileSync(file, b);
    const seen: number[] = [];
    expect(refusal(() => streamRankWeights(e.ranks[0], (w) => seen.push(w.value)))).toMatch(
      new RegExp(`^${file}: content hash [0-9a-f]{12}… does not match config\\.json \\([0-9a-f]{12}…\\)`),
    );
    expect(seen).toEqual([1, 2]); // handed over before the hash is known: callers wait for the return
    expect(refusal(() => verifyEngine(e))).toMatch(new RegExp(`^${file}: content hash `));
    const mine: number[] = [];
    streamRankWeights(e.ranks[0], (w) => mine.push(w.value), { verify: false });
    expect(mine).toEqual([1, 2]);
    streamRankWeights({ ...e.ranks[0], entry: undefined }, () => {}); // in-memory rank: nothing to check against
  });

  it("a weight past the end of the file is truncated data, named", () => {
    const r = readRankHeader(rankFile(rankBytes()));
    const rank: EngineRank = {
      ...r,
      header: {
        ...r.header,
        weights: [...r.header.weights, { value: 1, offset: 512, nbytes: 64, random: null }],
      },
    };
    const seen: number[] = [];
    expect(refusal(() => streamRankWeights(rank, (w) => seen.push(w.value)))).toBe(
      `${r.file}: truncated weight data`,
    );
    expect(seen).toEqual([1, 2]);
  });

  it("a file that shrinks while it is read (after its first 16 MiB chunk) is named truncated at that byte", () => {
    const data = new Uint8Array(HASH_CHUNK_BYTES + 5000);
    const head = header({ weights: [{ value: 1, offset: HASH_CHUNK_BYTES, nbytes: 64, random: null }] });
    const file = rankFile(rankBytes({ head, data }));
    const r = readRankHeader(file);
    const size = fs.statSync(file).size;
    const seen: number[] = [];
    expect(
      refusal(() =>
        streamRankWeights(r, (w) => seen.push(w.value), {
          onBytes: (done) => fs.truncateSync(file, done),
        }),
      ),
    ).toBe(`${file}: truncated at byte ${HASH_CHUNK_BYTES} of ${size}`);
    expect(seen).toEqual([]);
    fs.rmSync(path.dirname(file), { recursive: true }); // this test's own folder (17 MB)
  });

  it("verifyEngine checks every rank and hands nothing over", () => {
    const dir = engineDir([
      rankBytes({ head: header({ tp: 2 }) }),
      rankBytes({ head: header({ rank: 1, tp: 2 }) }),
    ]);
    const e = openEngine(dir);
    verifyEngine(e);
    const r1 = path.join(dir, "rank1.engine");
    const b = fs.readFileSync(r1);
    b[100] ^= 1; // inside the header JSON's bytes, after the engine was opened
    fs.writeFileSync(r1, b);
    expect(refusal(() => verifyEngine(e))).toMatch(new RegExp(`^${r1}: content hash `));
  });
});

describe("file descriptors", () => {
  it("none is left open, whether a read succeeds or is refused", () => {
    const open = () => fs.readdirSync("/proc/self/fd").length;
    const dir = engineDir();
    const bad = rankFile(rankBytes({ magic: "TSLLMENX" }));
    const schema = rankFile(rankBytes({ head: header({ tp: 0 }) }));
    const before = open();
    const e = openEngine(dir);
    const r = e.ranks[0];
    expect(() => readRankHeader(bad)).toThrow(EngineError);
    expect(() => readRankHeader(schema)).toThrow(EngineError);
    readWeightBytes(r, 0, 64);
    expect(() => readWeightBytes(r, 0, 1 << 20)).toThrow(EngineError);
    verifyEngine(e);
    const past = {
      ...r,
      header: { ...r.header, weights: [{ value: 1, offset: 512, nbytes: 64, random: null }] },
    };
    expect(() => streamRankWeights(past, () => {})).toThrow(EngineError);
    expect(open()).toBe(before);
  });
});
