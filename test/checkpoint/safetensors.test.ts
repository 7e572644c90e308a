import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fromFloat32, toFloat32 } from "../../src/checkpoint/dtype.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import {
  MAX_HEADER_BYTES,
  openSafetensors,
  type TensorToWrite,
  writeSafetensors,
} from "../../src/checkpoint/safetensors.ts";
import { writeSafetensorsStreaming } from "../../src/checkpoint/safetensors-stream.ts";

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-st-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

let counter = 0;
/** A file with the given header (object or raw string) and `dataBytes` bytes of data. */
function rawFile(header: unknown, dataBytes: number, headerLenOverride?: bigint): string {
  const json = Buffer.from(typeof header === "string" ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(headerLenOverride ?? BigInt(json.length));
  const p = path.join(tmp, `f${counter++}.safetensors`);
  fs.writeFileSync(p, Buffer.concat([len, json, Buffer.alloc(dataBytes, 7)]));
  return p;
}

/** Assert opening `p` fails with a CheckpointError whose message names the file and matches `re`. */
function expectOpenError(p: string, re: RegExp, tensor?: string): string {
  let err: unknown;
  try {
    openSafetensors(p).close();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CheckpointError);
  const msg = (err as Error).message;
  expect(msg).toContain(p);
  expect(msg).toMatch(re);
  if (tensor) expect(msg).toContain(`"${tensor}"`);
  expect(msg).not.toContain("\n");
  return msg;
}

const t = (dtype: string, shape: number[], b: number, e: number) => ({ dtype, shape, data_offsets: [b, e] });

describe("writeSafetensors / openSafetensors round trip", () => {
  it("writes and reads back tensors, infos and metadata", () => {
    const p = path.join(tmp, "rt.safetensors");
    const a = fromFloat32("F32", new Float32Array([1, 2, 3, 4, 5, 6]));
    const b = fromFloat32("BF16", new Float32Array([0.5, -1, 2]));
    const c = new Uint8Array(0);
    writeSafetensors(
      p,
      {
        a: { dtype: "F32", shape: [2, 3], data: a },
        b: { dtype: "BF16", shape: [3], data: b },
        c: { dtype: "I8", shape: [0, 4], data: c },
      },
      { format: "pt" },
    );
    expect(fs.existsSync(`${p}.tmp`)).toBe(false);
    // Header padded so the data section starts 8-byte aligned.
    expect(Number(fs.readFileSync(p).readBigUInt64LE(0)) % 8).toBe(0);
    const f = openSafetensors(p);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(f.names().sort()).toEqual(["a", "b", "c"]);
    expect(f.info("a")).toMatchObject({ dtype: "F32", shape: [2, 3], byteLength: 24 });
    expect(Array.from(toFloat32("F32", f.read("a")))).toEqual([1, 2, 3, 4, 5, 6]);
    expect(Array.from(toFloat32("BF16", f.read("b")))).toEqual([0.5, -1, 2]);
    expect(f.read("c").byteLength).toBe(0);
    expect(() => f.info("nope")).toThrow(/"nope"/);
    f.close();
    expect(() => f.read("a")).toThrow(/after close/);
  });

  it("writes whole or not at all, never over a file beside the target (the old `<path>.tmp` was)", () => {
    const d = fs.mkdtempSync(path.join(tmp, "whole-"));
    const p = path.join(d, "m.safetensors");
    fs.writeFileSync(`${p}.tmp`, "the user's");
    fs.writeFileSync(p, "old");
    const w: Record<string, TensorToWrite> = {
      w: { dtype: "F16", shape: [2], data: fromFloat32("F16", new Float32Array([1, 2])) },
    };
    writeSafetensors(p, w);
    expect(fs.readFileSync(`${p}.tmp`, "utf8")).toBe("the user's");
    expect(Array.from(toFloat32("F16", openSafetensors(p).read("w")))).toEqual([1, 2]);
    expect(fs.readdirSync(d).sort()).toEqual(["m.safetensors", "m.safetensors.tmp"]);
  });

  it("streams tensors produced one at a time; a producer that fails leaves the old file and nothing else", () => {
    const d = fs.mkdtempSync(path.join(tmp, "stream-"));
    const p = path.join(d, "s.safetensors");
    const entries = [
      { name: "a", dtype: "F32" as const, shape: [2] },
      { name: "b", dtype: "BF16" as const, shape: [1, 3] },
    ];
    const values: Record<string, number[]> = { a: [1.5, -2], b: [0.5, 1, 4] };
    const bytes = writeSafetensorsStreaming(
      p,
      entries,
      (e) => fromFloat32(e.dtype as "F32" | "BF16", new Float32Array(values[e.name]!)),
      {
        format: "pt",
      },
    );
    expect(bytes).toBe(8 + 6);
    // header padded with spaces so the data section starts 8-byte aligned, as writeSafetensors does
    const hlen = Number(fs.readFileSync(p).readBigUInt64LE(0));
    expect(hlen % 8).toBe(0);
    expect(
      fs
        .readFileSync(p)
        .subarray(8, 8 + hlen)
        .toString()
        .trimEnd().length,
    ).toBeGreaterThan(hlen - 8);
    const f = openSafetensors(p);
    expect(f.metadata).toEqual({ format: "pt" });
    expect(Array.from(toFloat32("F32", f.read("a")))).toEqual([1.5, -2]);
    expect(f.info("b")).toMatchObject({ dtype: "BF16", shape: [1, 3] });
    expect(Array.from(toFloat32("BF16", f.read("b")))).toEqual([0.5, 1, 4]);
    f.close();
    const before = fs.readFileSync(p);
    expect(() => writeSafetensorsStreaming(p, entries, () => new Uint8Array(3))).toThrow(
      `${p}: tensor "a" produced 3 bytes, expected 8`,
    );
    expect(fs.readFileSync(p).equals(before)).toBe(true);
    expect(fs.readdirSync(d)).toEqual(["s.safetensors"]);
  });

  it("refuses data whose size does not match dtype×shape", () => {
    expect(() =>
      writeSafetensors(path.join(tmp, "bad.safetensors"), {
        w: { dtype: "F16", shape: [3], data: new Uint8Array(4) },
      }),
    ).toThrow(/"w".*needs 6/);
  });
});

describe("corrupt safetensors files", () => {
  it("truncated file: says truncated with expected vs actual size", () => {
    const p = rawFile({ a: t("F32", [4], 0, 16), b: t("F32", [4], 16, 32) }, 20);
    const msg = expectOpenError(p, /truncated/);
    const json = JSON.stringify({ a: t("F32", [4], 0, 16), b: t("F32", [4], 16, 32) });
    expect(msg).toContain(`should be ${8 + json.length + 32} bytes`);
    expect(msg).toContain(`it is ${8 + json.length + 20} bytes`);
  });

  it("file shorter than the 8-byte length prefix", () => {
    const p = path.join(tmp, "tiny.safetensors");
    fs.writeFileSync(p, Buffer.alloc(5));
    expectOpenError(p, /truncated.*5 bytes/);
  });

  it("header length larger than the file", () => {
    expectOpenError(rawFile({}, 0, 1000n), /header length 1000 is larger than the file/);
  });

  it("absurd header length", () => {
    expectOpenError(rawFile({}, 0, 1n << 40n), /exceeds the \d+-byte limit/);
  });

  it("bad JSON", () => {
    expectOpenError(rawFile('{"a": {"dtype": "F32",', 0), /not valid JSON/);
  });

  it("JSON that is not an object", () => {
    expectOpenError(rawFile("[1,2]", 0), /not an object/);
  });

  it("overlapping offsets", () => {
    const p = rawFile({ a: t("F32", [4], 0, 16), b: t("F32", [4], 8, 24) }, 24);
    expectOpenError(p, /overlapping tensor "a"/, "b");
  });

  it("out-of-range offsets", () => {
    const p = rawFile({ a: t("F32", [4], 0, 16), b: t("F32", [4], 64, 80) }, 16);
    expectOpenError(p, /out of range/, "b");
  });

  it("gap between tensors", () => {
    const p = rawFile({ a: t("F32", [4], 0, 16), b: t("F32", [4], 20, 36) }, 36);
    expectOpenError(p, /gap of 4 bytes/, "b");
  });

  it("gap at the start and trailing bytes", () => {
    expectOpenError(rawFile({ a: t("F32", [4], 4, 20) }, 20), /gap of 4 bytes .* start/, "a");
    expectOpenError(rawFile({ a: t("F32", [4], 0, 16) }, 20), /gap: 4 trailing bytes/);
  });

  it("dtype/shape size mismatch", () => {
    const p = rawFile({ w: t("F16", [3, 4], 0, 16) }, 16);
    expectOpenError(p, /size mismatch.*F16.*\[3, 4\].*24 bytes.*span 16/, "w");
  });

  it("unknown dtype", () => {
    expectOpenError(rawFile({ w: t("F12", [4], 0, 6) }, 6), /unknown dtype "F12"/, "w");
  });

  it("bad shape and bad offsets", () => {
    expectOpenError(rawFile({ w: t("U8", [-1], 0, 0) }, 0), /shape must be/, "w");
    expectOpenError(rawFile({ w: t("U8", [2.5], 0, 0) }, 0), /shape must be/, "w");
    expectOpenError(
      rawFile({ w: { dtype: "U8", shape: [1], data_offsets: [0] } }, 1),
      /data_offsets must be/,
      "w",
    );
    expectOpenError(rawFile({ w: t("U8", [0], 4, 0) }, 4), /end before begin/, "w");
  });

  it("non-string metadata", () => {
    expectOpenError(rawFile({ __metadata__: { n: 3 } }, 0), /__metadata__ value for "n"/);
  });

  it("missing file", () => {
    expectOpenError(path.join(tmp, "absent.safetensors"), /cannot open/);
  });
});

describe("safetensors byte layout and boundaries", () => {
  // Open file descriptors of this process (Linux): opening, refusing and closing files must not leak one.
  const openFds = () => fs.readdirSync("/proc/self/fd").length;

  it("writes the reference layout byte for byte: u64 LE header length, JSON padded with spaces to 8, data", () => {
    const p = path.join(tmp, "layout1.safetensors");
    // 1.0 and -2.0 in fp16: 0x3c00, 0xc000 (little-endian).
    writeSafetensors(
      p,
      { w: { dtype: "F16", shape: [2], data: new Uint8Array([0x00, 0x3c, 0x00, 0xc0]) } },
      {},
    );
    const json = '{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}'; // 54 bytes → 2 spaces → 56
    const want = Buffer.concat([
      Buffer.from([56, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(`${json}  `, "latin1"),
      Buffer.from([0x00, 0x3c, 0x00, 0xc0]),
    ]);
    expect(fs.readFileSync(p)).toEqual(want);

    const q = path.join(tmp, "layout2.safetensors");
    writeSafetensors(
      q,
      {
        a: { dtype: "U8", shape: [3], data: new Uint8Array([1, 2, 3]) },
        b: { dtype: "I16", shape: [1, 2], data: new Uint8Array([0xff, 0x7f, 0x00, 0x80]) },
      },
      { format: "pt" },
    );
    const json2 =
      '{"__metadata__":{"format":"pt"},"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"I16","shape":[1,2],"data_offsets":[3,7]}}';
    // 139 bytes → 5 spaces → 144 = 0x90
    const want2 = Buffer.concat([
      Buffer.from([0x90, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(`${json2}     `, "latin1"),
      Buffer.from([1, 2, 3, 0xff, 0x7f, 0x00, 0x80]),
    ]);
    expect(fs.readFileSync(q)).toEqual(want2);
    const f = openSafetensors(q);
    expect(f.info("b")).toEqual({ dtype: "I16", shape: [1, 2], byteLength: 4, fileOffset: 8 + 144 + 3 });
    expect(Array.from(new Int16Array(f.read("b").buffer))).toEqual([32767, -32768]);
    f.close();
  });

  it("the writer refuses the reserved name, an unknown dtype, and names the shape it needed", () => {
    const w = (tensors: Record<string, { dtype: string; shape: number[]; data: Uint8Array }>) => () =>
      writeSafetensors(path.join(tmp, "w.safetensors"), tensors as never);
    expect(w({ __metadata__: { dtype: "U8", shape: [1], data: new Uint8Array(1) } })).toThrow(
      /tensor name __metadata__ is reserved/,
    );
    expect(w({ x: { dtype: "F12", shape: [1], data: new Uint8Array(1) } })).toThrow(
      /tensor "x": unknown dtype "F12"/,
    );
    expect(w({ x: { dtype: "F32", shape: [2, 3], data: new Uint8Array(20) } })).toThrow(
      /tensor "x": data is 20 bytes but dtype F32 shape \[2, 3\] needs 24$/,
    );
    expect(fs.existsSync(path.join(tmp, "w.safetensors"))).toBe(false);
  });

  it("reads tensors listed out of offset order; names() is file order; zero-size tensors may share an offset", () => {
    const p = rawFile(
      { b: t("U8", [2], 2, 4), z: t("U8", [0], 2, 2), a: t("U8", [2], 0, 2), e: t("U8", [0], 4, 4) },
      4,
    );
    const f = openSafetensors(p);
    expect(f.names()).toEqual(["a", "z", "b", "e"]);
    expect(f.info("b").fileOffset).toBe(f.info("a").fileOffset + 2);
    f.close();
  });

  it("an 8-byte file (header length 0) is refused as bad JSON, not as too short", () => {
    const p = path.join(tmp, "eight.safetensors");
    fs.writeFileSync(p, Buffer.alloc(8));
    expectOpenError(p, /header is not valid JSON/);
  });

  it("a header that ends exactly at the end of the file is read; one byte more is refused with the room left", () => {
    const json = Buffer.from("{}");
    const p = path.join(tmp, "exact.safetensors");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(2n);
    fs.writeFileSync(p, Buffer.concat([len, json]));
    const f = openSafetensors(p);
    expect(f.names()).toEqual([]);
    f.close();
    // 6 > the 2 bytes after the prefix (but < the file size + 8): refused by size, before reading.
    expectOpenError(
      rawFile({}, 0, 6n),
      /header length 6 is larger than the file allows \(2 bytes after the length prefix/,
    );
  });

  it("a header length of exactly the limit is within the limit (then refused as larger than the file)", () => {
    expectOpenError(rawFile({}, 0, BigInt(MAX_HEADER_BYTES)), /is larger than the file allows/);
    expectOpenError(rawFile({}, 0, BigInt(MAX_HEADER_BYTES) + 1n), /exceeds the 104857600-byte limit/);
  });

  it("a header that is not UTF-8 is refused even inside a JSON string", () => {
    const json = Buffer.concat([
      Buffer.from('{"__metadata__":{"a":"'),
      Buffer.from([0xff]),
      Buffer.from('"}}'),
    ]);
    const p = path.join(tmp, "latin1.safetensors");
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(p, Buffer.concat([len, json]));
    expectOpenError(p, /header is not valid JSON/);
  });

  it("a JSON error quoting several lines is kept on one line, runs of whitespace as one space", () => {
    const msg = expectOpenError(rawFile('{"a": x\n\n  }', 0), /header is not valid JSON: Unexpected token/);
    expect(msg).toContain('"{"a": x }" is not valid JSON');
  });

  it("malformed entries and metadata are named precisely", () => {
    expectOpenError(rawFile({ w: 5 }, 0), /header entry is not an object/, "w");
    expectOpenError(rawFile({ w: [1] }, 0), /header entry is not an object/, "w");
    expectOpenError(rawFile({ w: null }, 0), /header entry is not an object/, "w");
    expectOpenError(
      rawFile({ w: { ...t("U8", [1], 0, 1), extra: 1 } }, 1),
      /unexpected header field "extra"/,
      "w",
    );
    expectOpenError(
      rawFile({ w: t("U8", [2, -1], 0, 0) }, 0),
      /shape must be an array of non-negative integers, got \[2,-1\]/,
    );
    expectOpenError(
      rawFile({ w: t("U8", [1], -1, 0) }, 0),
      /data_offsets must be \[begin, end\] of non-negative/,
      "w",
    );
    expectOpenError(
      rawFile({ w: t("U8", [2 ** 40, 2 ** 40], 0, 0) }, 0),
      /shape \[1099511627776,1099511627776\] is too large/,
    );
    expectOpenError(
      rawFile({ w: t("F12", [1], 0, 1) }, 1),
      /\(known: F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64/,
    );
    expectOpenError(rawFile({ __metadata__: "pt" }, 0), /__metadata__ must be an object of strings/);
    expectOpenError(rawFile({ __metadata__: ["pt"] }, 0), /__metadata__ must be an object of strings/);
    expectOpenError(rawFile("[1,2]", 0), /header JSON is not an object/);
    expectOpenError(rawFile("null", 0), /header JSON is not an object/);
    // Offsets not starting at 0: the span is end - begin.
    expectOpenError(
      rawFile({ a: t("U8", [4], 0, 4), w: t("F16", [3, 4], 4, 20) }, 20),
      /dtype F16 shape \[3, 4\] needs 24 bytes but data_offsets \[4, 20\] span 16$/,
      "w",
    );
  });

  it("gap and lookup messages say where", () => {
    const msg = expectOpenError(
      rawFile({ a: t("F32", [4], 0, 16), b: t("F32", [4], 20, 36) }, 36),
      /gap/,
      "b",
    );
    expect(msg).toContain('gap of 4 bytes between tensor "a" (ends at 16) and data_offsets [20, 36]');
    const f = openSafetensors(rawFile({ a: t("U8", [1], 0, 1) }, 1));
    expect(() => f.info("nope")).toThrow(/tensor "nope": no such tensor in this file$/);
    f.close();
  });

  it("a file truncated after opening: the read says which tensor, how much it got, and does not loop", () => {
    const p = path.join(tmp, "shrinks.safetensors");
    writeSafetensors(p, {
      a: { dtype: "U8", shape: [8], data: new Uint8Array(8).fill(1) },
      b: { dtype: "U8", shape: [16], data: new Uint8Array(16).fill(2) },
    });
    const f = openSafetensors(p);
    const { fileOffset } = f.info("b");
    fs.truncateSync(p, fileOffset + 5); // 5 of b's 16 bytes left
    expect(() => f.read("b")).toThrow(
      new RegExp(`: truncated while reading tensor "b": expected 16 bytes at offset ${fileOffset}, got 5$`),
    );
    expect(Array.from(f.read("a"))).toEqual(Array(8).fill(1));
    f.close();
  });

  it("no file descriptor is left open: after close (twice), after a refused open, after a write", () => {
    const good = rawFile({ a: t("U8", [1], 0, 1) }, 1);
    const bad = rawFile({ a: t("U8", [1], 0, 1) }, 2);
    const before = openFds();
    for (let i = 0; i < 20; i++) {
      const f = openSafetensors(good);
      f.close();
      f.close();
      expect(() => openSafetensors(bad)).toThrow(CheckpointError);
      writeSafetensors(path.join(tmp, "fd.safetensors"), {
        a: { dtype: "U8", shape: [1], data: new Uint8Array(1) },
      });
    }
    expect(openFds()).toBe(before);
  });
});
