// Fuzzing the safetensors reader (src/checkpoint/safetensors.ts) with fast-check: valid files load and
// read back their bytes; truncations, flipped bytes, random header lengths (up to 2^64-1), structurally
// fuzzed headers (dtypes, shapes with huge/negative/fractional numbers, offsets), arbitrary JSON and
// non-UTF-8 bytes either load consistently or raise CheckpointError, never anything else, and no read
// ever asks for bytes past the end of the file.
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { DTYPE_SIZES, type Dtype } from "../../src/checkpoint/dtype.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { openSafetensors } from "../../src/checkpoint/safetensors.ts";
import { breathe, expectOurError, FUZZ_SEED, guardReads, removeScratch, report, scratch } from "./harness.ts";

const RUNS = 9000;
const DTYPES = Object.keys(DTYPE_SIZES) as Dtype[];

interface Tensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  data: Uint8Array;
}

const tensorArb: fc.Arbitrary<Tensor> = fc
  .record({
    name: fc.oneof(
      fc.constantFrom("w", "model.norm.weight", "lm_head.weight", "a.b", "x0"),
      fc.string({ minLength: 1, maxLength: 8 }),
    ),
    dtype: fc.constantFrom(...DTYPES),
    shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
    seed: fc.integer(),
  })
  .map(({ name, dtype, shape, seed }) => {
    const n = shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[dtype];
    const data = new Uint8Array(n).map((_, i) => (seed + i * 131) & 0xff);
    return { name, dtype, shape, data };
  });

const tensorsArb = fc.uniqueArray(tensorArb, { selector: (t) => t.name, maxLength: 5 });

function encode(header: unknown, data: Uint8Array, lenOverride?: bigint, rawHeader?: Uint8Array): Uint8Array {
  const h = rawHeader ?? Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

function validFile(ts: Tensor[], metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  let off = 0;
  for (const t of ts) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  return encode(header, Buffer.concat(ts.map((t) => t.data)));
}

// Numbers a hostile header may hold where the reader expects small non-negative integers.
const wildNumber = fc.oneof(
  fc.integer({ min: 0, max: 64 }),
  fc.integer(),
  fc.constantFrom(
    -1,
    2 ** 31,
    2 ** 32,
    2 ** 53,
    2 ** 53 + 2,
    2 ** 64,
    1e300,
    -0,
    0.5,
    Number.MAX_SAFE_INTEGER,
  ),
  fc.double(),
);
const wildValue = fc.oneof(
  wildNumber,
  fc.string(),
  fc.constant(null),
  fc.boolean(),
  fc.array(wildNumber, { maxLength: 3 }),
);
const fuzzedEntry = fc.record(
  {
    dtype: fc.oneof(fc.constantFrom(...DTYPES), fc.string(), wildValue),
    shape: fc.oneof(fc.array(wildNumber, { maxLength: 4 }), wildValue),
    data_offsets: fc.oneof(
      fc.tuple(wildNumber, wildNumber),
      fc.array(wildNumber, { maxLength: 3 }),
      wildValue,
    ),
    extra: wildValue,
  },
  { requiredKeys: [] },
);

type Case =
  | { kind: "valid"; ts: Tensor[]; meta?: Record<string, string> }
  | { kind: "bytes"; bytes: Uint8Array };

const caseArb: fc.Arbitrary<Case> = fc.oneof(
  // Valid files, with and without metadata.
  fc.record({
    kind: fc.constant("valid" as const),
    ts: tensorsArb,
    meta: fc.option(fc.dictionary(fc.string(), fc.string()), { nil: undefined }),
  }),
  // Truncated at any point.
  fc.tuple(tensorsArb, fc.nat()).map(([ts, cut]): Case => {
    const b = validFile(ts);
    return { kind: "bytes", bytes: b.subarray(0, cut % (b.length + 1)) };
  }),
  // Bytes flipped anywhere (header length, JSON, data).
  fc
    .tuple(
      tensorsArb,
      fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }),
    )
    .map(([ts, flips]): Case => {
      const b = Uint8Array.from(validFile(ts));
      for (const [at, x] of flips) b[at % b.length] ^= x;
      return { kind: "bytes", bytes: b };
    }),
  // Header length replaced by any u64, or off by a little.
  fc
    .tuple(
      tensorsArb,
      fc.oneof(fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.bigInt({ min: -16n, max: 16n })),
    )
    .map(([ts, l]): Case => {
      const b = Buffer.from(validFile(ts));
      const n = b.readBigUInt64LE(0);
      const v = l < 0n || l <= 16n ? n + l : l;
      b.writeBigUInt64LE(((v % (1n << 64n)) + (1n << 64n)) % (1n << 64n), 0);
      return { kind: "bytes", bytes: b };
    }),
  // Structurally fuzzed header entries, with a data section of random length.
  fc
    .tuple(
      fc.dictionary(fc.string({ maxLength: 8 }), fuzzedEntry, { maxKeys: 4 }),
      fc.option(wildValue),
      fc.nat({ max: 256 }),
    )
    .map(([entries, meta, n]): Case => {
      const header: Record<string, unknown> = { ...entries };
      if (meta !== null) header.__metadata__ = meta;
      return { kind: "bytes", bytes: encode(header, new Uint8Array(n)) };
    }),
  // Any JSON value as the header, or raw bytes (non-UTF-8 included).
  fc
    .tuple(fc.jsonValue(), fc.nat({ max: 64 }))
    .map(([j, n]): Case => ({ kind: "bytes", bytes: encode(j, new Uint8Array(n)) })),
  fc
    .tuple(fc.uint8Array({ maxLength: 64 }), fc.nat({ max: 64 }))
    .map(([raw, n]): Case => ({ kind: "bytes", bytes: encode(null, new Uint8Array(n), undefined, raw) })),
  // Arbitrary short files.
  fc.uint8Array({ maxLength: 40 }).map((bytes): Case => ({ kind: "bytes", bytes })),
);

describe("safetensors reader under fuzzing", () => {
  const dir = scratch("safetensors");
  const file = path.join(dir, "model.safetensors");
  let cases = 0;
  let loaded = 0;
  const t0 = performance.now();
  afterAll(() => {
    report("safetensors", cases, loaded, (performance.now() - t0) / 1000);
    removeScratch(dir);
  });

  it(`${RUNS} generated files: load consistently or raise CheckpointError`, async () => {
    const guard = guardReads();
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          cases++;
          await breathe(cases);
          fs.writeFileSync(file, c.kind === "valid" ? validFile(c.ts, c.meta) : c.bytes);
          let f: ReturnType<typeof openSafetensors> | undefined;
          try {
            f = openSafetensors(file);
            for (const name of f.names()) {
              const info = f.info(name);
              const bytes = f.read(name);
              expect(bytes.length).toBe(info.byteLength);
              expect(info.byteLength).toBe(info.shape.reduce((a, b) => a * b, 1) * DTYPE_SIZES[info.dtype]);
            }
            if (c.kind === "valid") {
              expect(f.names().sort()).toEqual(c.ts.map((t) => t.name).sort());
              for (const t of c.ts)
                expect(Buffer.from(f.read(t.name)).equals(Buffer.from(t.data))).toBe(true);
            }
            loaded++;
          } catch (e) {
            if (c.kind === "valid") throw e;
            expectOurError(e, [CheckpointError]);
          } finally {
            f?.close();
          }
          expect(guard.violations).toEqual([]);
        }),
        { seed: FUZZ_SEED, numRuns: RUNS },
      );
    } finally {
      guard.restore();
    }
  });
});
