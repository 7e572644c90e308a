// Fuzzing the engine reader (src/engine/reader.ts: config.json, rank file preamble and header, content
// hash, weight reads) with fast-check. Engines are untrusted input (a server loads them, --no-verify
// skips the hash), so every damaged engine must either open consistently (every weight readable at its
// size) or raise EngineError: never another exception, never a path outside the engine, never a read
// past the end of a file.
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compileEngine } from "../../src/compile.ts";
import { alignUp, DATA_ALIGN, PREAMBLE_BYTES } from "../../src/engine/format.ts";
import { ChunkedHasher } from "../../src/engine/hash.ts";
import { EngineError, openEngine, readWeightBytes, streamRankWeights } from "../../src/engine/reader.ts";
import { LLAMA_MODEL, TINY_LLAMA } from "../fixtures.ts";
import { breathe, expectOurError, FUZZ_SEED, guardReads, removeScratch, report, scratch } from "./harness.ts";

const RUNS = 3000; // each case parses a full engine header (~5 ms on a loaded 2-core machine): the slowest reader

interface Base {
  config: Record<string, unknown>;
  rank: Buffer;
  header: Record<string, unknown>;
  data: Buffer;
}
const bases: Base[] = [];

function load(dir: string): Base {
  const config = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
  const rank = fs.readFileSync(path.join(dir, "rank0.engine"));
  const len = Number(rank.readBigUInt64LE(16));
  const header = JSON.parse(rank.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + len).toString("utf8"));
  return { config, rank, header, data: rank.subarray(alignUp(PREAMBLE_BYTES + len, DATA_ALIGN)) };
}

function encodeRank(pre: Buffer, header: unknown, data: Buffer): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const p = Buffer.from(pre.subarray(0, PREAMBLE_BYTES));
  p.writeBigUInt64LE(BigInt(json.length), 16);
  const pad = Buffer.alloc(alignUp(PREAMBLE_BYTES + json.length, DATA_ALIGN) - PREAMBLE_BYTES - json.length);
  return Buffer.concat([p, json, pad, data]);
}

const wildNumber = fc.oneof(
  fc.integer({ min: -1, max: 5000 }),
  fc.constantFrom(2 ** 31, 2 ** 32, 2 ** 53, 2 ** 60, 1e300, -1, 0.5, Number.MAX_SAFE_INTEGER),
);
const wild = fc.oneof(
  wildNumber,
  fc.string({ maxLength: 10 }),
  fc.constantFrom(
    "../outside",
    "../../../etc/hostname",
    "/etc/hostname",
    "..",
    ".",
    "",
    "rank0.engine",
    "a/b",
    "con\u0000",
  ),
  fc.constant(null),
  fc.boolean(),
  fc.array(wildNumber, { maxLength: 3 }),
  fc.constant({}),
);

/** Sets a value at a random path of a JSON tree (objects and arrays), or deletes it. */
function editAt(root: unknown, picks: number[], value: unknown, del: boolean): unknown {
  const copy = structuredClone(root);
  let node: unknown = copy;
  for (let d = 0; d < picks.length; d++) {
    if (typeof node !== "object" || node === null) break;
    const keys = Object.keys(node);
    if (keys.length === 0) break;
    const k = keys[picks[d] % keys.length];
    const child = (node as Record<string, unknown>)[k];
    const last = d === picks.length - 1 || typeof child !== "object" || child === null;
    if (last) {
      if (del && !Array.isArray(node)) delete (node as Record<string, unknown>)[k];
      else (node as Record<string, unknown>)[k] = value;
      break;
    }
    node = child;
  }
  return copy;
}
const treeEdit = fc.record({
  picks: fc.array(fc.nat(), { minLength: 1, maxLength: 5 }),
  value: wild,
  del: fc.boolean(),
});

type Case = {
  base: number;
  config?: unknown;
  configBytes?: Uint8Array;
  rank?: Buffer;
  fixSize: boolean;
  verify: boolean;
};

const caseArb: fc.Arbitrary<Case> = fc
  .tuple(
    fc.nat(),
    fc.boolean(),
    fc.boolean(),
    fc.oneof(
      // config.json: a field anywhere replaced or deleted (rank file names, sizes, hashes, build, facts).
      fc.array(treeEdit, { minLength: 1, maxLength: 3 }).map((edits) => (b: Base): Partial<Case> => {
        let c: unknown = b.config;
        for (const e of edits) c = editAt(c, e.picks, e.value, e.del);
        return { config: c };
      }),
      fc
        .constantFrom(
          ...[
            "../outside",
            "../../../etc/hostname",
            "/etc/passwd",
            "..",
            "sub/rank0.engine",
            "",
            "rank0.engine\u0000x",
            "-rf",
          ],
        )
        .map(
          (file) =>
            (b: Base): Partial<Case> => ({
              config: { ...b.config, ranks: [{ ...(b.config.ranks as object[])[0], file }] },
            }),
        ),
      fc.jsonValue().map((j) => (): Partial<Case> => ({ config: j })),
      fc
        .array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 3 })
        .map((flips) => (b: Base): Partial<Case> => {
          const c = Buffer.from(JSON.stringify(b.config));
          for (const [at, x] of flips) c[at % c.length] ^= x;
          return { configBytes: c };
        }),
      // Rank file: the header edited anywhere (weights' offsets and sizes, value ids, shapes, dtypes, nodes).
      fc.array(treeEdit, { minLength: 1, maxLength: 3 }).map((edits) => (b: Base): Partial<Case> => {
        let h: unknown = b.header;
        for (const e of edits) h = editAt(h, e.picks, e.value, e.del);
        return { rank: encodeRank(b.rank, h, b.data) };
      }),
      fc.jsonValue().map(
        (j) =>
          (b: Base): Partial<Case> => ({ rank: encodeRank(b.rank, j, b.data) }),
      ),
      // Rank file bytes: flipped in the preamble or header, a random header length, truncation.
      fc
        .array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 })
        .map((flips) => (b: Base): Partial<Case> => {
          const r = Buffer.from(b.rank);
          const headerEnd = PREAMBLE_BYTES + Number(b.rank.readBigUInt64LE(16));
          for (const [at, x] of flips) r[at % headerEnd] ^= x;
          return { rank: r };
        }),
      fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((len) => (b: Base): Partial<Case> => {
        const r = Buffer.from(b.rank);
        r.writeBigUInt64LE(len, 16);
        return { rank: r };
      }),
      fc.nat().map(
        (cut) =>
          (b: Base): Partial<Case> => ({ rank: b.rank.subarray(0, cut % (b.rank.length + 1)) }),
      ),
    ),
  )
  .map(([base, fixSize, verify, mutate]) => {
    const b = base % 8 === 0 ? 1 : 0; // the real engine (1.1 MB) in one case of 8: it costs most of the time
    return { base: b, fixSize, verify, ...mutate(bases[b]) } as Case;
  });

describe("engine reader under fuzzing", () => {
  const dir = scratch("engine");
  let cases = 0;
  let loaded = 0;
  const t0 = performance.now();
  beforeAll(async () => {
    for (const [name, o] of [
      ["random", {}],
      ["real", { checkpoint: TINY_LLAMA }],
    ] as const) {
      const out = path.join(dir, `base-${name}`);
      await compileEngine({
        modelFile: LLAMA_MODEL,
        sm: 90,
        dtype: "fp16",
        out,
        maxSeqLen: 64,
        maxNumTokens: 64,
        ...o,
      });
      bases.push(load(out));
    }
  });
  afterAll(() => {
    report("engine", cases, loaded, (performance.now() - t0) / 1000);
    removeScratch(dir);
  });

  it("the base engines open and read back", () => {
    for (const name of ["random", "real"]) {
      const e = openEngine(path.join(dir, `base-${name}`));
      for (const w of e.ranks[0].header.weights)
        if (!w.random) expect(readWeightBytes(e.ranks[0], w.offset, w.nbytes).length).toBe(w.nbytes);
    }
  });

  it(`${RUNS} damaged engines: open consistently or raise EngineError`, async () => {
    const eng = path.join(dir, "case");
    fs.mkdirSync(eng);
    // A file beside the engine that a path escaping it would reach.
    fs.writeFileSync(path.join(dir, "outside"), "not an engine");
    const guard = guardReads();
    try {
      await fc.assert(
        fc.asyncProperty(caseArb, async (c) => {
          cases++;
          await breathe(cases);
          const b = bases[c.base];
          const rank = c.rank ?? b.rank;
          fs.writeFileSync(path.join(eng, "rank0.engine"), rank);
          let config = c.config ?? b.config;
          // Keep config.json's size (and hash) in step with a changed rank file half the time, so the
          // header checks are reached rather than only the size check.
          if (c.rank && c.fixSize && typeof config === "object" && config !== null) {
            const h = new ChunkedHasher();
            h.update(rank);
            const ranks = [
              {
                file: "rank0.engine",
                bytes: rank.length,
                hash: { chunk_bytes: h.chunkBytes, sha256: h.digest() },
              },
            ];
            config = { ...config, ranks };
          }
          fs.writeFileSync(path.join(eng, "config.json"), c.configBytes ?? JSON.stringify(config));
          try {
            const e = openEngine(eng);
            for (const r of e.ranks) {
              expect(path.dirname(r.file)).toBe(eng);
              // The loaders' one pass: weights handed over as they stream, the content hash checked at the end.
              if (c.verify) streamRankWeights(r, (w, bytes) => expect(bytes.length).toBe(w.nbytes));
              for (const w of r.header.weights)
                if (!w.random) expect(readWeightBytes(r, w.offset, w.nbytes).length).toBe(w.nbytes);
            }
            loaded++;
          } catch (e) {
            expectOurError(e, [EngineError]);
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
