// The chunked content hash (src/engine/hash.ts) against published SHA-256 vectors and digests worked out
// with the recipe in hash.ts's header, run in a shell, never with the code under test:
//   printf abcdef | split -b 3 --filter 'sha256sum | cut -c1-64 | xxd -r -p' | sha256sum
// Small chunk sizes make every boundary case a few bytes long.
import { describe, expect, it } from "vitest";
import {
  ChunkedHasher,
  chunkDigest,
  combineChunkDigests,
  HASH_CHUNK_BYTES,
  mismatch,
  type RankEntry,
  verifierFor,
} from "../src/engine/hash.ts";

const te = (s: string) => new TextEncoder().encode(s);
const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

// FIPS 180-2 examples: SHA-256 of "", "abc" and the 448-bit message.
const SHA_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const SHA_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
const MSG448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
const SHA_448 = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
// SHA-256 of a SHA-256 (a one-chunk file): the published double-SHA-256 of "" and of "abc".
const DSHA_EMPTY = "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456";
const DSHA_ABC = "4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358";
// By the shell recipe: "abcdef" in 3-byte chunks (two full), "abcdefg" (two full and one byte),
// the 448-bit message (56 bytes) in 16-byte chunks (three full and eight bytes).
const CHUNKED_ABCDEF_3 = "9c04d30057b754af1b2d2d4f5675782dd61a5a659c34ee6c2af47526b66cafa6";
const CHUNKED_ABCDEFG_3 = "ea8e7fd3c626a71d7b6a783840f468a7e095420dcdc3cb9bbb1a5b2743740afc";
const CHUNKED_448_16 = "995ce3216326481d46ac2fc92cf7aaec4a4d70a92c869587a40fc601a387a7bf";

describe("digest primitives", () => {
  it("chunkDigest is SHA-256 of its pieces in order", () => {
    expect(hex(chunkDigest([]))).toBe(SHA_EMPTY);
    expect(hex(chunkDigest([te("a"), te(""), te("bc")]))).toBe(SHA_ABC);
  });

  it("combineChunkDigests is SHA-256 of the concatenated digests", () => {
    expect(combineChunkDigests([])).toBe(SHA_EMPTY);
    expect(combineChunkDigests([Buffer.from(SHA_EMPTY, "hex")])).toBe(DSHA_EMPTY);
    expect(combineChunkDigests([Buffer.from(SHA_ABC, "hex")])).toBe(DSHA_ABC);
  });

  it("the chunk size of new engines is 16 MiB (a format constant: changing it changes every digest)", () => {
    expect(HASH_CHUNK_BYTES).toBe(16 * 1024 * 1024);
    expect(new ChunkedHasher().chunkBytes).toBe(HASH_CHUNK_BYTES);
  });
});

describe("ChunkedHasher", () => {
  /** A hasher of `chunk`-byte chunks fed `pieces`. */
  function fed(chunk: number, ...pieces: string[]) {
    const h = new ChunkedHasher(chunk);
    for (const p of pieces) h.update(te(p));
    return h;
  }

  it("an empty file is one empty chunk", () => {
    const h = fed(3);
    expect(h.digest()).toBe(DSHA_EMPTY);
    expect(h.digests.map(hex)).toEqual([SHA_EMPTY]);
    expect(h.bytes).toBe(0);
    expect(fed(3, "", "").digest()).toBe(DSHA_EMPTY);
  });

  it("a file of exactly one chunk has no extra empty chunk", () => {
    for (const h of [fed(3, "abc"), fed(3, "a", "bc"), fed(HASH_CHUNK_BYTES, "abc"), fed(4, "abc")]) {
      expect(h.digest()).toBe(DSHA_ABC);
      expect(h.digests.map(hex)).toEqual([SHA_ABC]);
      expect(h.bytes).toBe(3);
    }
  });

  it("cuts at every chunk boundary however the bytes are fed", () => {
    for (const pieces of [["abcdef"], ["a", "bcde", "f"], ["ab", "", "cd", "ef"], ["abc", "def"]]) {
      const h = fed(3, ...pieces);
      expect(h.digest()).toBe(CHUNKED_ABCDEF_3);
      expect(h.digests).toHaveLength(2);
      expect(h.bytes).toBe(6);
    }
    for (const pieces of [["abcdefg"], ["abcd", "efg"], ["abcdef", "g"]]) {
      const h = fed(3, ...pieces);
      expect(h.digest()).toBe(CHUNKED_ABCDEFG_3);
      expect(h.digests).toHaveLength(3);
      expect(h.bytes).toBe(7);
    }
    expect(fed(16, MSG448.slice(0, 20), MSG448.slice(20)).digest()).toBe(CHUNKED_448_16);
  });

  it("digest() can be asked twice", () => {
    const h = fed(3, "abcdefg");
    expect(h.digest()).toBe(CHUNKED_ABCDEFG_3);
    expect(h.digest()).toBe(CHUNKED_ABCDEFG_3);
    const e = fed(3);
    expect(e.digest()).toBe(DSHA_EMPTY);
    expect(e.digest()).toBe(DSHA_EMPTY);
  });
});

describe("verifierFor (what a loader checks an engine's rank file against)", () => {
  const entry = (e: Partial<RankEntry>): RankEntry => ({ file: "rank0.engine", bytes: 0, ...e });
  const fail = (msg: string) => new Error(`rank0.engine: ${msg}`);
  /** The error check() throws, or null. */
  function check(e: RankEntry, ...pieces: string[]): Error | null {
    const v = verifierFor(e);
    for (const p of pieces) v.update(te(p));
    try {
      v.check(fail);
      return null;
    } catch (err) {
      return err as Error;
    }
  }

  it("a chunked entry is checked in its own chunk size", () => {
    expect(check(entry({ hash: { chunk_bytes: 3, sha256: CHUNKED_ABCDEF_3 } }), "ab", "cdef")).toBeNull();
    expect(check(entry({ hash: { chunk_bytes: 16, sha256: CHUNKED_448_16 } }), MSG448)).toBeNull();
    expect(check(entry({ hash: { chunk_bytes: 3, sha256: DSHA_ABC } }), "abc")).toBeNull();
    // It wins over a legacy whole-file hash beside it.
    expect(
      check(entry({ hash: { chunk_bytes: 3, sha256: CHUNKED_ABCDEF_3 }, sha256: SHA_EMPTY }), "abcdef"),
    ).toBeNull();
  });

  it("a chunked entry refuses other bytes, saying what it got and what config.json says", () => {
    const e = check(entry({ hash: { chunk_bytes: 3, sha256: CHUNKED_ABCDEF_3 } }), "abcdeF");
    expect(e?.message).toMatch(
      /^rank0\.engine: content hash [0-9a-f]{12}… does not match config\.json \(9c04d30057b7…\): the file is corrupt or was modified$/,
    );
    // The same bytes cut at another size give another digest.
    const other = check(entry({ hash: { chunk_bytes: 2, sha256: CHUNKED_ABCDEF_3 } }), "abcdef");
    expect(other?.message).toMatch(/does not match config\.json \(9c04d30057b7…\)/);
    // "got" is the digest of what was read: the whole-file double SHA-256 of "abc" here.
    expect(check(entry({ hash: { chunk_bytes: 3, sha256: CHUNKED_ABCDEF_3 } }), "abc")?.message).toBe(
      `rank0.engine: content hash ${DSHA_ABC.slice(0, 12)}… does not match config.json (${CHUNKED_ABCDEF_3.slice(0, 12)}…): the file is corrupt or was modified`,
    );
  });

  it("a legacy entry is checked against the whole-file SHA-256", () => {
    expect(check(entry({ sha256: SHA_448 }), MSG448.slice(0, 30), MSG448.slice(30))).toBeNull();
    expect(check(entry({ sha256: SHA_ABC }), "abc")).toBeNull();
    expect(check(entry({ sha256: SHA_ABC }), "abd")?.message).toMatch(
      /^rank0\.engine: content hash [0-9a-f]{12}… does not match config\.json \(ba7816bf8f01…\)/,
    );
    expect(check(entry({ sha256: SHA_ABC }))?.message).toBe(
      `rank0.engine: content hash ${SHA_EMPTY.slice(0, 12)}… does not match config.json (ba7816bf8f01…): the file is corrupt or was modified`,
    );
  });

  it("an entry with no hash at all (which config.json's schema refuses) never passes", () => {
    expect(check(entry({}), "abc")?.message).toBe(
      `rank0.engine: content hash ${SHA_ABC.slice(0, 12)}… does not match config.json (…): the file is corrupt or was modified`,
    );
  });

  it("mismatch shows the first 12 hex digits of each", () => {
    expect(mismatch(SHA_ABC, SHA_EMPTY)).toBe(
      "content hash ba7816bf8f01… does not match config.json (e3b0c44298fc…): the file is corrupt or was modified",
    );
  });
});
