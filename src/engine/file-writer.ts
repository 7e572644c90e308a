// Positional writes of the engine writer's rank files. Large builds write on one worker thread with
// synchronous write() calls: one thread appending in file order, so the writes neither contend for the
// file's lock nor cost a thread-pool round trip each (measured here, TinyLlama 2.2 GB: libuv's pool spent
// 1.8 s of CPU on the reads and writes and switched context 48,000 times; cat spends 0.8 s). Small
// builds use libuv's pool (starting a worker costs more than it saves).
import * as fs from "node:fs";
import { Worker } from "node:worker_threads";

const WORKER = new URL("./workers/write-worker.mjs", import.meta.url);

/**
 * Bytes per write() call. Measured here (Linux 6.x guest, ext4, 2.2 GB from a reused 8 MiB buffer, one
 * thread): 128-256 KiB calls cost 0.42-0.46 s of kernel time, 512 KiB 1.0 s, 1 MiB 2.1-3.6 s, 8 MiB
 * 2.4-2.5 s (the same bytes), so large writes are made of 128 KiB calls, as cat does.
 */
export const WRITE_CALL_BYTES = 128 << 10;

function writeAt(fd: number, b: Uint8Array, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.write(fd, b, 0, b.length, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

/** Writes the pieces one after another from `pos` on libuv's pool, in calls of at most WRITE_CALL_BYTES. */
async function writeAll(fd: number, bufs: Uint8Array[], pos: number): Promise<void> {
  for (const b of bufs)
    for (let off = 0; off < b.length; ) {
      const n = await writeAt(fd, b.subarray(off, Math.min(b.length, off + WRITE_CALL_BYTES)), pos);
      off += n;
      pos += n;
    }
}

export class FileWriter {
  private worker: Worker | null = null;
  private jobs = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  private id = 0;

  constructor(useWorker: boolean) {
    if (!useWorker) return;
    const w = new Worker(WORKER);
    w.on("message", ({ id, error }: { id: number; error?: string }) => {
      const j = this.jobs.get(id);
      this.jobs.delete(id);
      if (error) j?.reject(new Error(error));
      else j?.resolve();
    });
    w.on("error", (e) => {
      for (const j of this.jobs.values()) j.reject(e);
      this.jobs.clear();
    });
    // Not unref'd: while the writer awaits a write, the worker is what keeps the process alive.
    this.worker = w;
  }

  /** Writes the pieces one after another from file position `pos`. */
  write(fd: number, bufs: Uint8Array[], pos: number): Promise<void> {
    if (!this.worker) return writeAll(fd, bufs, pos);
    const id = this.id++;
    const w = this.worker;
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject });
      // A view of an ordinary ArrayBuffer would clone its whole buffer: send a copy of just the view.
      const shared = bufs.map((b) => (b.buffer instanceof SharedArrayBuffer ? b : b.slice()));
      w.postMessage({ id, fd, bufs: shared, pos, call: WRITE_CALL_BYTES });
    });
  }

  async close(): Promise<void> {
    await this.worker?.terminate();
    this.worker = null;
  }
}
