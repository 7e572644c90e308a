// Content hash of a rank file, computed in the same pass that reads (or writes) its bytes.
//
// A rank file is cut into chunks of `chunk_bytes` (the last one shorter); the engine's digest is the
// SHA-256 of the concatenated SHA-256 digests of the chunks. Chunks hash independently, so a writer
// or loader hashes them on several threads while the bytes stream through; a plain whole-file SHA-256
// cannot go faster than one core (~1.7 GB/s), slower than a disk or the page cache. Engines written
// before this scheme carry a whole-file `sha256` instead, still checked in the same pass (one thread).
//   by hand: split -b 16M --filter 'sha256sum | cut -c1-64 | xxd -r -p' rank0.engine | sha256sum
import { createHash, type Hash } from "node:crypto";
import type { EngineConfig } from "./format.ts";

export const HASH_CHUNK_BYTES = 16 << 20;

export type RankEntry = EngineConfig["ranks"][number];

/** The engine digest from its chunk digests, in file order. */
export function combineChunkDigests(digests: readonly Uint8Array[]): string {
  const h = createHash("sha256");
  for (const d of digests) h.update(d);
  return h.digest("hex");
}

/** SHA-256 of one chunk given as consecutive pieces (views; nothing is copied). */
export function chunkDigest(pieces: readonly Uint8Array[]): Buffer {
  const h = createHash("sha256");
  for (const p of pieces) h.update(p);
  return h.digest();
}

/** Streaming verifier: feed the file's bytes in order, then `check` compares with config.json. */
export interface Verifier {
  update(bytes: Uint8Array): void;
  /** Throws (via `fail`) when the digest differs; call after the last byte. */
  check(fail: (msg: string) => Error): void;
}

/** Chunked hash on the calling thread (the CPU loader and tests; writers and the GPU loader use threads). */
export class ChunkedHasher {
  private hash: Hash | null = null;
  private inChunk = 0;
  readonly digests: Buffer[] = [];
  bytes = 0;
  constructor(readonly chunkBytes = HASH_CHUNK_BYTES) {}
  update(bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.length) {
      this.hash ??= createHash("sha256");
      const n = Math.min(this.chunkBytes - this.inChunk, bytes.length - off);
      this.hash.update(bytes.subarray(off, off + n));
      off += n;
      this.inChunk += n;
      if (this.inChunk === this.chunkBytes) this.endChunk();
    }
    this.bytes += bytes.length;
  }
  private endChunk(): void {
    this.digests.push((this.hash ?? createHash("sha256")).digest());
    this.hash = null;
    this.inChunk = 0;
  }
  digest(): string {
    if (this.inChunk > 0 || this.digests.length === 0) this.endChunk();
    return combineChunkDigests(this.digests);
  }
}

/** The verifier config.json asks for: the chunked digest, or a legacy engine's whole-file SHA-256. */
export function verifierFor(entry: RankEntry): Verifier {
  if (entry.hash) {
    const want = entry.hash.sha256;
    const h = new ChunkedHasher(entry.hash.chunk_bytes);
    return {
      update: (b) => h.update(b),
      check: (fail) => {
        const got = h.digest();
        if (got !== want) throw fail(mismatch(got, want));
      },
    };
  }
  const want = entry.sha256 ?? "";
  const h = createHash("sha256");
  return {
    update: (b) => h.update(b),
    check: (fail) => {
      const got = h.digest("hex");
      if (got !== want) throw fail(mismatch(got, want));
    },
  };
}

export function mismatch(got: string, want: string): string {
  return `content hash ${got.slice(0, 12)}… does not match config.json (${want.slice(0, 12)}…): the file is corrupt or was modified`;
}
