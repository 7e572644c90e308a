// FP8 quantisation on worker threads, so a --quant fp8 build quantises on every core while reads, writes
// and hashing go on (src/engine/writer.ts). Each weight's rows are split over the workers; sources, values
// and scales are views of SharedArrayBuffers (the prefetcher's buffers, this pool's output buffers), so no
// bytes are copied between threads. The numbers are the main thread's (src/quant/fp8-rows.ts).
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { Checkpoint } from "../checkpoint/checkpoint.ts";
import type { Value } from "../ir/types.ts";
import { BufferPool } from "../weights/prefetch.ts";
import { fp8Tables, quantizeFp8Rows, type SourceRows } from "./fp8-rows.ts";
import { type Fp8Made, fp8Output, fp8Source } from "./materialize.ts";

const WORKER = new URL("./workers/fp8-worker.mjs", import.meta.url);
/** Below this many elements a weight is quantised on the calling thread (a message round trip costs more). */
const WORKER_FROM_ELEMS = 1 << 18;

const shared = (a: ArrayBufferView) => a.buffer instanceof SharedArrayBuffer;

export class Fp8Pool {
  private workers: Worker[] = [];
  private jobs = new Map<number, { worker: Worker; resolve: () => void; reject: (e: Error) => void }>();
  private id = 0;

  constructor(size = availableParallelism()) {
    const tables = fp8Tables();
    for (let i = 0; i < size; i++) {
      const w = new Worker(WORKER);
      w.on("message", (id: number) => {
        const j = this.jobs.get(id);
        this.jobs.delete(id);
        j?.resolve();
      });
      // A worker ends with an exception in a job (its error) or on close(): the jobs it still has are
      // rejected, and it takes no more (later weights go to the others, or to this thread once none is left).
      const lost = (e: Error) => {
        this.workers = this.workers.filter((x) => x !== w);
        for (const [id, j] of this.jobs)
          if (j.worker === w) {
            this.jobs.delete(id);
            j.reject(e);
          }
      };
      w.on("error", lost);
      w.on("exit", (code) => lost(new Error(`FP8 worker exited with code ${code}`)));
      w.postMessage({ tables });
      this.workers.push(w);
    }
  }

  /**
   * Quantises the rows of `parts` (each row K elements) into `values` [N, K] and `scales` [N]: split over the
   * workers when everything is in SharedArrayBuffers, else on this thread.
   */
  async quantize(parts: SourceRows[], k: number, values: Uint8Array, scales: Float32Array): Promise<void> {
    const n = parts.reduce((a, p) => a + p.rows, 0);
    const ok =
      this.workers.length > 0 && shared(values) && shared(scales) && parts.every((p) => shared(p.data));
    if (!ok || n * k < WORKER_FROM_ELEMS) return quantizeFp8Rows(parts, k, values, scales);
    const slices = Math.min(n, this.workers.length);
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < slices; i++) {
      const begin = Math.floor((n * i) / slices);
      const end = Math.floor((n * (i + 1)) / slices);
      const id = this.id++;
      const worker = this.workers[i];
      // posted first: when the message cannot be sent (a part that cannot be cloned), no job is left waiting
      worker.postMessage({ id, parts, k, begin, end, values, scales });
      jobs.push(new Promise((resolve, reject) => this.jobs.set(id, { worker, resolve, reject })));
    }
    await Promise.all(jobs);
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
    this.workers = [];
  }
}

/**
 * The engine writer's FP8 weights: each source weight's values and scales made once on the pool, into reused
 * shared buffers (a fresh buffer costs a page fault per 4 KiB), kept until both were asked for (the writer
 * interleaves the ranks of a tp build, so a companion may come a few weights later).
 */
export class Fp8Maker {
  private made = new Map<string, { done: Promise<void>; q: Fp8Made }>();
  private mine = new Set<ArrayBufferLike>();

  /** buffers: where values and scales buffers come from (the writer shares its prefetcher's pool). */
  constructor(
    private readonly pool: Fp8Pool,
    private readonly rowsOf: (v: Value, ckpt: Checkpoint) => SourceRows[] | null,
    private readonly buffers = new BufferPool(),
  ) {}

  private take(bytes: number): Uint8Array {
    const b = this.buffers.take(bytes);
    this.mine.add(b);
    return new Uint8Array(b, 0, bytes);
  }

  /** The bytes of an FP8 values or scales weight, or null when it is not one made from plain source rows. */
  async make(v: Value, ckpt: Checkpoint): Promise<Uint8Array | null> {
    const f = fp8Source(v);
    if (!f) return null;
    let m = this.made.get(f.key);
    if (!m) {
      const rows = this.rowsOf({ ...v, recipe: f.pre }, ckpt);
      if (!rows) return null;
      // Sliced sources (a tp rank's columns) are copies in ordinary memory: share them with the workers.
      const parts = rows.map((p) => {
        if (p.data.buffer instanceof SharedArrayBuffer) return p;
        const data =
          p.data instanceof Float32Array
            ? new Float32Array(new SharedArrayBuffer(p.data.byteLength))
            : new Uint16Array(new SharedArrayBuffer(p.data.byteLength));
        data.set(p.data);
        return { ...p, data };
      });
      const n = parts.reduce((a, p) => a + p.rows, 0);
      const k = n ? parts[0].data.length / parts[0].rows : 0;
      const s = this.take(4 * n);
      const q: Fp8Made = {
        values: this.take(n * k),
        scales: new Float32Array(s.buffer, 0, n),
        n,
        k,
        left: 2,
      };
      m = { done: this.pool.quantize(parts, k, q.values, q.scales), q };
      this.made.set(f.key, m);
    }
    await m.done;
    if (--m.q.left === 0) this.made.delete(f.key);
    return fp8Output(v, m.q, f.output);
  }

  /** If `b` views one of the made buffers: the callback that gives it back (once written and hashed). */
  hold(b: Uint8Array): (() => void) | undefined {
    const buf = b.buffer;
    if (!(buf instanceof SharedArrayBuffer) || !this.mine.delete(buf)) return undefined;
    return () => this.buffers.give(buf);
  }

  close(): Promise<void> {
    return this.pool.close();
  }
}
