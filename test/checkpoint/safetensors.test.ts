import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fromFloat32, toFloat32 } from "../../src/checkpoint/dtype.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { openSafetensors, writeSafetensors } from "../../src/checkpoint/safetensors.ts";

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
