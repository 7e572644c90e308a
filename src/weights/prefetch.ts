// Checkpoint tensors read ahead, asynchronously (libuv's thread pool) into SharedArrayBuffers, so the
// next weights' reads overlap this weight's conversion, hashing and writing, and the bytes reach the
// hash workers without copies. Each tensor is read once and dropped after its last use.
import * as fs from "node:fs";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import { CheckpointError } from "../checkpoint/errors.ts";

/** Reads of one tensor are split so several run at once (queue depth for a cold disk). */
const READ_BYTES = 32 << 20;
/** Requests from this size may take an idle buffer more than twice as large (BufferPool). */
const LARGE_BYTES = 64 << 20;

function readAt(fd: number, into: Uint8Array, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, into, 0, into.length, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

async function readFully(fd: number, file: string, into: Uint8Array, pos: number): Promise<void> {
  for (let got = 0; got < into.length; ) {
    const n = await readAt(fd, into.subarray(got), pos + got);
    if (n === 0)
      throw new CheckpointError(
        file,
        `truncated: expected ${into.length} bytes at offset ${pos}, got ${got}`,
      );
    got += n;
  }
}

/**
 * Buffers are reused, never dropped while the build runs: a fresh buffer costs a page fault per 4 KiB
 * (measured here: reading 2.2 GB into fresh buffers 3.4 s, into a reused one 0.55 s), and a dropped
 * SharedArrayBuffer lingers until a garbage collection that its size does not prompt (dropping idle
 * buffers beyond 256 MB let a 7B build reach 5.5 GB). A request takes the smallest idle buffer that
 * fits and is at most twice its size; a large request (LARGE_BYTES) else any that fits; else a new one.
 * A model's weights come in a few sizes, repeated per layer, so the pool holds about the most of each
 * size in use at once. (Taking any larger idle buffer let small requests use up the large ones, so the
 * next large request made another: a 7B fp8 build's buffers grew through the layers, 0.81 → 0.85 GB,
 * 1.09-1.12 GB peak RSS; taking only close sizes left its 250 MB embedding buffer idle after lm_head:
 * 0.95-0.99 GB; now 0.86 GB.) Shared, so hash workers read them in place.
 */
export class BufferPool {
  private free: SharedArrayBuffer[] = []; // ascending size
  take(n: number): SharedArrayBuffer {
    const i = this.free.findIndex((b) => b.byteLength >= n);
    // A much larger idle buffer only for a large request (a 7B's idle 250 MB embedding buffer serving its
    // 86 MB MLP weights), never for the many small ones.
    if (i < 0 || (this.free[i].byteLength > 2 * n && n < LARGE_BYTES)) return new SharedArrayBuffer(n);
    return this.free.splice(i, 1)[0];
  }
  give(b: SharedArrayBuffer): void {
    const i = this.free.findIndex((x) => x.byteLength >= b.byteLength);
    this.free.splice(i < 0 ? this.free.length : i, 0, b);
  }
}

/** A source buffer and who still uses it: the prefetcher until the tensor's last use, and each piece
 * of it that a rank file has yet to write and hash. */
interface Lease {
  buf: SharedArrayBuffer;
  /** The tensor's size (the buffer may be larger). */
  bytes: number;
  refs: number;
}

export class Prefetcher {
  private fds = new Map<string, number>();
  private loaded = new Map<string, Promise<Uint8Array>>();
  private done = new Map<string, Uint8Array>();
  private leases = new Map<ArrayBufferLike, Lease>();
  private byName = new Map<string, Lease>();
  /** Reads handed to libuv and not yet finished (also those of a tensor whose other pieces failed). */
  private reading = new Set<Promise<void>>();
  /** Also the FP8 maker's (src/quant/fp8-pool.ts): one pool, so sources and outputs reuse each other's idle buffers. */
  readonly pool = new BufferPool();
  /** Bytes of source buffers in use (read ahead, or still to be written). */
  held = 0;

  constructor(private readonly ckpt: Checkpoint) {}

  private fd(file: string): number {
    let fd = this.fds.get(file);
    if (fd === undefined) {
      fd = fs.openSync(file, "r");
      this.fds.set(file, fd);
    }
    return fd;
  }

  /** Starts reading a tensor (once). */
  fetch(name: string): void {
    if (this.loaded.has(name)) return;
    const info = this.ckpt.info(name);
    const lease: Lease = { buf: this.pool.take(info.byteLength), bytes: info.byteLength, refs: 1 };
    const out = new Uint8Array(lease.buf, 0, info.byteLength);
    this.leases.set(lease.buf, lease);
    this.byName.set(name, lease);
    this.held += info.byteLength;
    const fd = this.fd(info.file);
    const parts: Promise<void>[] = [];
    for (let off = 0; off < out.length; off += READ_BYTES) {
      const part = readFully(
        fd,
        info.file,
        out.subarray(off, Math.min(out.length, off + READ_BYTES)),
        info.fileOffset + off,
      );
      this.reading.add(part);
      const settled = () => this.reading.delete(part);
      part.then(settled, settled);
      parts.push(part);
    }
    const p = Promise.all(parts).then(() => {
      this.done.set(name, out);
      return out;
    });
    p.catch(() => {}); // surfaced by ready()
    this.loaded.set(name, p);
  }

  async ready(names: readonly string[]): Promise<void> {
    for (const n of names) this.fetch(n);
    await Promise.all(names.map((n) => this.loaded.get(n)));
  }

  /** The tensor will not be asked for again (its buffer returns once its pieces are written). */
  release(name: string): void {
    if (!this.loaded.delete(name)) return;
    this.done.delete(name);
    const l = this.byName.get(name);
    this.byName.delete(name);
    if (l) this.unref(l);
  }

  /** If `b` views a fetched tensor, keeps its buffer until the returned callback is called. */
  hold(b: Uint8Array): (() => void) | undefined {
    const l = this.leases.get(b.buffer);
    if (!l) return undefined;
    l.refs++;
    return () => this.unref(l);
  }

  private unref(l: Lease): void {
    if (--l.refs > 0) return;
    this.leases.delete(l.buf);
    this.held -= l.bytes;
    this.pool.give(l.buf);
  }

  /** The checkpoint with `read` served from what was fetched (synchronous reads for anything else). */
  view(): Checkpoint {
    const c = this.ckpt;
    return {
      dir: c.dir,
      names: () => c.names(),
      has: (n) => c.has(n),
      info: (n) => c.info(n),
      read: (n) => this.done.get(n) ?? c.read(n),
      readF32: (n) => c.readF32(n),
      close: () => {},
    };
  }

  /**
   * Closes the files once no read queued on them is left: a build that fails while reads are still
   * queued ahead (or one piece of a tensor failed and the others still run) would otherwise have them
   * run on a closed descriptor, or on another file that the process opened under the same number since.
   */
  async close(): Promise<void> {
    while (this.reading.size > 0) await Promise.allSettled([...this.reading]);
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}
