// One rank file being written: bytes are appended in file order as views (no copies), gathered into
// large positional writes (file-writer.ts: a worker thread, or libuv's pool for small builds), and cut into hash chunks (src/engine/hash.ts)
// that worker threads digest meanwhile. The caller bounds memory by awaiting `settle` when too many
// bytes are still in flight.
import * as fs from "node:fs";
import type { FileWriter } from "./file-writer.ts";
import { combineChunkDigests, HASH_CHUNK_BYTES } from "./hash.ts";
import type { HashPool } from "./hash-pool.ts";

/** Bytes appended are gathered into batches of this size, each written by one call of the FileWriter. */
const WRITE_BYTES = 8 << 20;
const ZEROS = new Uint8Array(64 << 10);

/** A pushed piece's outstanding write and hash jobs. */
interface Done {
  left: number;
  fn?: () => void;
}
const finish = (d: Done) => {
  if (--d.left === 0) d.fn?.();
};

export class RankFile {
  private fd: number;
  /** Bytes appended so far (the file position of the next byte). */
  bytes = 0;
  /** Bytes that reached the disk. */
  written = 0;
  private hashed = 0;
  private batch: Uint8Array[] = [];
  private batchDone: Done[] = [];
  private batchBytes = 0;
  private batchPos = 0;
  private chunk: Uint8Array[] = [];
  private chunkDone: Done[] = [];
  private chunkBytes = 0;
  private digests: Promise<Buffer>[] = [];
  private pending = new Set<Promise<void>>();
  private failed: Error | null = null;

  constructor(
    readonly path: string,
    private readonly hashes: HashPool,
    private readonly writer: FileWriter,
    private readonly onWritten?: (n: number) => void,
  ) {
    this.fd = fs.openSync(path, "w");
  }

  /**
   * Appends bytes, kept by reference until written and hashed (do not modify them meanwhile);
   * `done` is called once they are both, so their buffer can be reused.
   */
  push(b: Uint8Array, done?: () => void): void {
    if (this.failed) throw this.failed;
    if (b.length === 0) {
      done?.();
      return;
    }
    const d: Done = { left: 1, fn: done };
    if (this.batchBytes === 0) this.batchPos = this.bytes;
    this.batch.push(b);
    this.batchDone.push(d);
    this.batchBytes += b.length;
    this.bytes += b.length;
    for (let off = 0; off < b.length; ) {
      const n = Math.min(HASH_CHUNK_BYTES - this.chunkBytes, b.length - off);
      this.chunk.push(off === 0 && n === b.length ? b : b.subarray(off, off + n));
      this.chunkDone.push(d);
      d.left++;
      this.chunkBytes += n;
      off += n;
      if (this.chunkBytes === HASH_CHUNK_BYTES) this.endChunk();
    }
    if (this.batchBytes >= WRITE_BYTES) this.flush();
  }

  /**
   * Copies the bytes of the hash chunk still being filled into a buffer of its own (at most one chunk), so the
   * buffers they view are no longer held for that hash: a large tensor whose tail waits for the next weights to
   * complete its chunk would otherwise stay in memory while they are read.
   */
  detachChunk(): void {
    if (this.chunkBytes === 0) return;
    const copy = new Uint8Array(this.chunkBytes);
    let o = 0;
    for (const c of this.chunk) {
      copy.set(c, o);
      o += c.length;
    }
    const dones = this.chunkDone;
    this.chunk = [copy];
    this.chunkDone = [];
    dones.forEach(finish);
  }

  /** Zero bytes up to file position `pos`. */
  padTo(pos: number): void {
    while (this.bytes < pos) this.push(ZEROS.subarray(0, Math.min(ZEROS.length, pos - this.bytes)));
  }

  private endChunk(): void {
    const d = this.hashes.digest(this.chunk);
    const n = this.chunkBytes;
    const dones = this.chunkDone;
    this.digests.push(d);
    this.track(
      d.then(() => {
        this.hashed += n;
        dones.forEach(finish);
      }),
    );
    this.chunk = [];
    this.chunkDone = [];
    this.chunkBytes = 0;
  }

  private flush(): void {
    if (this.batchBytes === 0) return;
    const bufs = this.batch;
    const dones = this.batchDone;
    const n = this.batchBytes;
    this.track(
      this.writer.write(this.fd, bufs, this.batchPos).then(() => {
        this.written += n;
        dones.forEach(finish);
        this.onWritten?.(n);
      }),
    );
    this.batch = [];
    this.batchDone = [];
    this.batchBytes = 0;
  }

  private track(p: Promise<void>): void {
    const q = p.then(
      () => {
        this.pending.delete(q);
      },
      (e: Error) => {
        this.pending.delete(q);
        this.failed ??= new Error(`${this.path}: ${e.message}`);
      },
    );
    this.pending.add(q);
  }

  /** Bytes appended but not yet both written and hashed (roughly: what this file holds in memory). */
  get inFlight(): number {
    return this.bytes - Math.min(this.written, this.hashed);
  }

  /** Whether a write or hash is outstanding. */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  /** Waits for some outstanding write or hash to finish. */
  async settle(): Promise<void> {
    if (this.pending.size) await Promise.race(this.pending);
    if (this.failed) throw this.failed;
  }

  /** Writes what is left, waits for everything, closes the file; returns its size and content hash. */
  async finish(): Promise<{ bytes: number; sha256: string }> {
    this.flush();
    if (this.chunkBytes > 0 || this.digests.length === 0) this.endChunk();
    while (this.pending.size) await Promise.race(this.pending);
    this.close();
    if (this.failed) throw this.failed;
    return { bytes: this.bytes, sha256: combineChunkDigests(await Promise.all(this.digests)) };
  }

  /** Closes the file after a failure elsewhere (outstanding operations are left to finish); once closed, nothing. */
  async abort(): Promise<void> {
    await Promise.allSettled([...this.pending]);
    try {
      this.close();
    } catch {}
  }

  // Closes the descriptor once: a second close (abort after finish closed it, as writeEngine's failure path
  // does for every rank) could close another file that has since been given the same number.
  private close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    fs.closeSync(fd);
  }
}
