// The chunked content hash (src/engine/hash.ts) as the writer computes it (rank-file.ts on hash workers)
// and as the loaders check it in their one pass (streamRankWeights), on files of several chunks.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { FileWriter } from "../src/engine/file-writer.ts";
import { ChunkedHasher, HASH_CHUNK_BYTES } from "../src/engine/hash.ts";
import { HashPool } from "../src/engine/hash-pool.ts";
import { RankFile } from "../src/engine/rank-file.ts";
import { type EngineRank, streamRankWeights } from "../src/engine/reader.ts";
import { tmpDir as newTmpDir } from "./fixtures.ts";

// Each test writes about 33 MB: removed afterwards (a mutation run repeats these tests many times).
const made: string[] = [];
const tmpDir = () => {
  const d = newTmpDir();
  made.push(d);
  return d;
};
afterAll(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

/** The definition, written out: SHA-256 over the SHA-256 of each chunk. */
function reference(b: Uint8Array): string {
  const outer = createHash("sha256");
  for (let o = 0; o < b.length; o += HASH_CHUNK_BYTES)
    outer.update(
      createHash("sha256")
        .update(b.subarray(o, o + HASH_CHUNK_BYTES))
        .digest(),
    );
  return outer.digest("hex");
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(new SharedArrayBuffer(n));
  let x = seed;
  for (let i = 0; i < n; i++) b[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return b;
}

describe("chunked content hash", () => {
  const data = bytes(2 * HASH_CHUNK_BYTES + 12345, 7); // 2 full chunks and a short one

  it("ChunkedHasher fed in odd pieces equals the definition", () => {
    const h = new ChunkedHasher();
    for (let o = 0; o < data.length; o += 999_983) h.update(data.subarray(o, o + 999_983));
    expect(h.digest()).toBe(reference(data));
    expect(h.digests.length).toBe(3);
  });

  it("a rank file written in odd pieces by the write worker and hashed by workers has the bytes and the digest of the definition", async () => {
    const file = path.join(tmpDir(), "rank0.engine");
    const pool = new HashPool(2);
    const writer = new FileWriter(true);
    const f = new RankFile(file, pool, writer);
    let released = 0;
    const cuts = [0, 24, 4096, 5_000_000, HASH_CHUNK_BYTES, HASH_CHUNK_BYTES + 1, 40_000_000, data.length];
    for (let i = 1; i < cuts.length; i++) f.push(data.subarray(cuts[i - 1], cuts[i]), () => released++);
    const r = await f.finish();
    await Promise.all([pool.close(), writer.close()]);
    expect(r.bytes).toBe(data.length);
    expect(r.sha256).toBe(reference(data));
    expect(released).toBe(cuts.length - 1); // every piece handed back once written and hashed
    expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(data))).toBe(true);
  });

  it("detachChunk hands back a piece held only by an incomplete hash chunk, the digest unchanged", async () => {
    const file = path.join(tmpDir(), "rank0.engine");
    const pool = new HashPool(1);
    const writer = new FileWriter(true);
    const f = new RankFile(file, pool, writer);
    // A piece ending inside the second chunk (and over the write batch size: written at once); its first
    // chunk is hashed, its tail waits for bytes that complete the chunk.
    const cut = HASH_CHUNK_BYTES + 1_000_000;
    const piece = new Uint8Array(data.subarray(0, cut)); // its own copy, overwritten once handed back
    let released = false;
    f.push(piece, () => {
      released = true;
    });
    while (f.busy) await f.settle();
    expect(released).toBe(false);
    f.detachChunk();
    expect(released).toBe(true);
    piece.fill(0); // the rest of the file and the digest no longer read it
    f.push(data.subarray(cut));
    const r = await f.finish();
    await Promise.all([pool.close(), writer.close()]);
    expect(r.sha256).toBe(reference(data));
    expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(data))).toBe(true);
  });

  it("the loading pass hands over weights that straddle chunks and catches a flip in the last MB", () => {
    const dir = tmpDir();
    const file = path.join(dir, "rank0.engine");
    fs.writeFileSync(file, data);
    const weights = [
      { value: 1, offset: 0, nbytes: 1000, random: null },
      { value: 2, offset: HASH_CHUNK_BYTES - 5000, nbytes: HASH_CHUNK_BYTES + 7000, random: null }, // spans 3 chunks
      { value: 3, offset: data.length - 4096 - 100, nbytes: 100, random: null },
    ];
    const rank = {
      file,
      dataOffset: 4096,
      header: { weights } as unknown as EngineRank["header"],
      entry: {
        file: "rank0.engine",
        bytes: data.length,
        hash: { chunk_bytes: HASH_CHUNK_BYTES, sha256: reference(data) },
      },
    } as EngineRank;
    const got = new Map<number, Uint8Array>();
    streamRankWeights(rank, (w, b) => got.set(w.value, b));
    for (const w of weights)
      expect(
        Buffer.from(got.get(w.value)!).equals(
          Buffer.from(data.subarray(4096 + w.offset, 4096 + w.offset + w.nbytes)),
        ),
      ).toBe(true);
    const bad = Buffer.from(data);
    bad[bad.length - 300_000] ^= 1;
    fs.writeFileSync(file, bad);
    expect(() => streamRankWeights(rank, () => {})).toThrow(
      /rank0\.engine: content hash .* does not match config\.json/,
    );
    expect(() => streamRankWeights(rank, () => {}, { verify: false })).not.toThrow();
  });
});
