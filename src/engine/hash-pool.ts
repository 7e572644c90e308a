// SHA-256 of chunks on worker threads, so hashing overlaps reading, converting and writing (src/engine/
// hash.ts). Views of SharedArrayBuffers travel without copies; other views are copied once by
// postMessage (small pieces: headers, padding, constants).
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { chunkDigest } from "./hash.ts";

const WORKER = new URL("./workers/hash-worker.mjs", import.meta.url);

export class HashPool {
  private workers: Worker[] = [];
  private next = 0;
  private jobs = new Map<number, { resolve: (d: Buffer) => void; reject: (e: Error) => void }>();
  private id = 0;
  /** Why the pool can no longer hash: a worker failed or exited. Later digests are refused with it, not left
   * waiting on a worker that will never answer. */
  private broken: Error | null = null;
  private closing = false;

  /** size 0 hashes on the calling thread (tiny engines: starting a worker costs more than it saves). */
  constructor(size = Math.max(1, Math.min(4, availableParallelism() - 1))) {
    for (let i = 0; i < size; i++) {
      const w = new Worker(WORKER);
      w.on("message", ({ id, digest }: { id: number; digest: Uint8Array }) => {
        const j = this.jobs.get(id);
        this.jobs.delete(id);
        j?.resolve(Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength));
      });
      const fail = (e: Error) => {
        this.broken ??= e;
        for (const j of this.jobs.values()) j.reject(e);
        this.jobs.clear();
      };
      w.on("error", fail);
      w.on("exit", (code) => {
        if (!this.closing)
          fail(new Error(`hash worker exited (code ${code}) while the engine was being written`));
      });
      // Not unref'd: while the writer awaits a digest, the worker is what keeps the process alive.
      this.workers.push(w);
    }
  }

  digest(pieces: Uint8Array[]): Promise<Buffer> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.workers.length === 0) return Promise.resolve(chunkDigest(pieces));
    const id = this.id++;
    const w = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject });
      // A view of an ordinary ArrayBuffer would clone its whole buffer: send a copy of just the view.
      w.postMessage({
        id,
        pieces: pieces.map((p) => (p.buffer instanceof SharedArrayBuffer ? p : p.slice())),
      });
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}
