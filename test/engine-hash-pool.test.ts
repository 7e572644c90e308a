// HashPool (src/engine/hash-pool.ts): SHA-256 of chunks on worker threads equal to the calling thread's, whatever
// the pieces are views of; the pool size from the CPU count; a worker's error rejecting what waits on it; close().
import { createHash } from "node:crypto";
import type { Worker } from "node:worker_threads";
import { describe, expect, it, vi } from "vitest";
import { HashPool } from "../src/engine/hash-pool.ts";

const cpus = vi.hoisted(() => ({ n: null as number | null }));
vi.mock("node:os", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:os")>();
  const availableParallelism = () => cpus.n ?? real.availableParallelism();
  return { ...real, default: { ...real, availableParallelism }, availableParallelism };
});

const sha = (...pieces: Uint8Array[]) => {
  const h = createHash("sha256");
  for (const p of pieces) h.update(p);
  return h.digest();
};
const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 255);
interface Inside {
  workers: unknown[];
  jobs: Map<number, unknown>;
}
const inside = (p: HashPool) => p as unknown as Inside;

/** `p`, or an error if it has not settled within `ms`. */
const within = <T>(p: Promise<T>, ms = 5000) =>
  Promise.race([p, new Promise<never>((_, rej) => setTimeout(() => rej(new Error("not settled")), ms))]);

describe("HashPool", () => {
  it("size 0 hashes on the calling thread", async () => {
    const pool = new HashPool(0);
    expect(inside(pool).workers).toHaveLength(0);
    const a = bytes(100, 1);
    const d = await pool.digest([a, a.subarray(10, 20)]);
    expect(Buffer.isBuffer(d)).toBe(true);
    expect(d).toEqual(sha(a, a.subarray(10, 20)));
    await pool.close();
  });

  it("workers: each digest that of its own pieces (views into larger buffers, shared or not), in any number", async () => {
    const pool = new HashPool(2);
    expect(inside(pool).workers).toHaveLength(2);
    try {
      const big = bytes(4096, 7);
      const shared = new Uint8Array(new SharedArrayBuffer(1000));
      shared.set(bytes(1000, 3));
      const jobs = [
        [big.subarray(100, 300)],
        [shared.subarray(5, 905), Buffer.from("header")],
        [],
        [bytes(1, 9), big.subarray(4000), shared],
        [big],
      ];
      const got = await within(Promise.all(jobs.map((j) => pool.digest(j))));
      expect(got).toEqual(jobs.map((j) => sha(...j)));
      for (const d of got) expect(d).toHaveLength(32);
      expect(inside(pool).jobs.size).toBe(0);
      // The pieces handed in are left as they were (copies of non-shared views were sent).
      expect(big).toEqual(bytes(4096, 7));
      const exited = (inside(pool).workers as Worker[]).map((w) => new Promise((res) => w.once("exit", res)));
      await pool.close();
      // close() ended the threads (a live one would keep the process from exiting).
      await within(Promise.all(exited), 2000);
    } finally {
      await pool.close();
    }
    expect(inside(pool).workers).toHaveLength(0);
    // Closed, it still hashes: on the calling thread.
    expect(await within(pool.digest([bytes(10, 2)]))).toEqual(sha(bytes(10, 2)));
  });

  it("the default size: one worker fewer than the CPUs, at least 1, at most 4", async () => {
    for (const [n, size] of [
      [1, 1],
      [2, 1],
      [3, 2],
      [5, 4],
      [16, 4],
    ]) {
      cpus.n = n;
      const pool = new HashPool();
      try {
        expect(inside(pool).workers, `${n} CPUs`).toHaveLength(size);
      } finally {
        cpus.n = null;
        await pool.close();
      }
    }
  });

  it("a worker's error rejects every digest waiting on it", async () => {
    const pool = new HashPool(1);
    try {
      const good = pool.digest([bytes(50, 1)]);
      // Not a view: the worker's hash.update throws on it, and the worker dies.
      const bad = pool.digest([{ buffer: new SharedArrayBuffer(4) } as unknown as Uint8Array]);
      const after = pool.digest([bytes(50, 2)]);
      expect(await within(good)).toEqual(sha(bytes(50, 1)));
      const e1 = await within(bad).catch((e: unknown) => e);
      const e2 = await within(after).catch((e: unknown) => e);
      expect(e1).toBeInstanceOf(Error);
      expect((e1 as Error).message).not.toBe("not settled");
      expect(e2).toBe(e1);
      expect(inside(pool).jobs.size).toBe(0);
    } finally {
      await pool.close();
    }
  });

  it("after a worker failed or exited, a later digest is refused with why, not left waiting for ever", async () => {
    // It went round robin to the dead worker (or the one that had answered for it), and never settled.
    const dead = new HashPool(1);
    try {
      const bad = dead.digest([{ buffer: new SharedArrayBuffer(4) } as unknown as Uint8Array]);
      const e1 = await within(bad).catch((e: unknown) => e);
      expect((e1 as Error).message).not.toBe("not settled");
      for (let i = 0; i < 3; i++)
        expect(await within(dead.digest([bytes(8, i)])).catch((e: unknown) => e)).toBe(e1);
    } finally {
      await dead.close();
    }
    const gone = new HashPool(2);
    try {
      const exited = new Promise((res) => (inside(gone).workers[0] as Worker).once("exit", res));
      await (inside(gone).workers[0] as Worker).terminate();
      await exited;
      const e = await within(gone.digest([bytes(8, 1)])).catch((err: unknown) => err);
      expect((e as Error).message).toMatch(
        /^hash worker exited \(code \d+\) while the engine was being written$/,
      );
      expect(await within(gone.digest([bytes(8, 2)])).catch((err: unknown) => err)).toBe(e);
    } finally {
      await gone.close();
    }
    // close() itself ends the workers without breaking anything said before.
    const closed = new HashPool(1);
    expect(await within(closed.digest([bytes(8, 3)]))).toEqual(sha(bytes(8, 3)));
    await closed.close();
  });

  it("a worker's error rejects the digests waiting on the others too; their answers, coming later, are dropped", async () => {
    const pool = new HashPool(2);
    try {
      // The first digest goes to worker 0, which dies on it; the second, 64 MiB, to worker 1, which answers after.
      const bad = pool.digest([{ buffer: new SharedArrayBuffer(4) } as unknown as Uint8Array]);
      const big = new Uint8Array(new SharedArrayBuffer(64 << 20));
      const answered = new Promise((res) => (inside(pool).workers[1] as Worker).once("message", res));
      const slow = pool.digest([big]);
      const e1 = await within(bad).catch((e: unknown) => e);
      const e2 = await within(slow).catch((e: unknown) => e);
      expect(e1).toBeInstanceOf(Error);
      expect((e1 as Error).message).not.toBe("not settled");
      expect(e2).toBe(e1);
      await within(answered);
      // The late answer found no job, and threw nothing (an exception in the listener would fail the run).
      await new Promise((res) => setImmediate(res));
      expect(inside(pool).jobs.size).toBe(0);
    } finally {
      await pool.close();
    }
  });
});
