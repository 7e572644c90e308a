// Checkpoint read-ahead (src/weights/prefetch.ts): BufferPool's choice of idle buffer (the smallest that
// fits, at most twice the request unless the request is large), and the Prefetcher on real checkpoint
// files written here: the bytes it serves are the file's (also across its 32 MiB read pieces and across
// shards), each tensor is read once, buffers return to the pool only after the last holder lets go, a
// truncated file is refused with its one-line message, and close() closes every file it opened, once the reads
// queued on them have finished.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Checkpoint, openCheckpoint } from "../../src/checkpoint/checkpoint.ts";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import { BufferPool, Prefetcher } from "../../src/weights/prefetch.ts";

const MiB = 1 << 20;

describe("BufferPool", () => {
  it("an empty pool makes a shared buffer of exactly the size asked", () => {
    const b = new BufferPool().take(100);
    expect(b).toBeInstanceOf(SharedArrayBuffer);
    expect(b.byteLength).toBe(100);
  });

  it("takes the smallest idle buffer that fits, whatever order they were given back in", () => {
    const pool = new BufferPool();
    const [b100, b50, b80] = [100, 50, 80].map((n) => new SharedArrayBuffer(n));
    pool.give(b100);
    pool.give(b50);
    pool.give(b80);
    expect(pool.take(45)).toBe(b50);
    expect(pool.take(60)).toBe(b80);
    expect(pool.take(60)).toBe(b100); // 100 ≤ 2 × 60
    const fresh = pool.take(60); // none idle
    expect([b50, b80, b100]).not.toContain(fresh);
    expect(fresh.byteLength).toBe(60);
  });

  it("a small request leaves an idle buffer more than twice its size alone", () => {
    const pool = new BufferPool();
    const b = new SharedArrayBuffer(100);
    pool.give(b);
    const small = pool.take(49); // 100 > 98: a fresh one
    expect(small).not.toBe(b);
    expect(small.byteLength).toBe(49);
    expect(pool.take(50)).toBe(b); // 100 = 2 × 50: taken
    expect(pool.take(50)).not.toBe(b); // and no longer idle
  });

  it("a request of 64 MiB or more takes any idle buffer that fits; one byte less does not", () => {
    const pool = new BufferPool();
    const big = new SharedArrayBuffer(160 * MiB); // untouched pages: no memory used
    pool.give(big);
    const under = pool.take(64 * MiB - 1);
    expect(under).not.toBe(big);
    expect(under.byteLength).toBe(64 * MiB - 1);
    expect(pool.take(64 * MiB)).toBe(big);
  });

  it("never hands out a buffer smaller than the request", () => {
    const pool = new BufferPool();
    pool.give(new SharedArrayBuffer(10));
    pool.give(new SharedArrayBuffer(20));
    expect(pool.take(21).byteLength).toBe(21);
  });
});

/** n bytes of a fixed pseudo-random pattern (seeded), distinct per seed. */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

describe("Prefetcher", () => {
  let root: string;
  let k = 0;
  const dirs: Checkpoint[] = [];
  beforeAll(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-prefetch-"));
  });
  afterAll(() => {
    for (const c of dirs) c.close();
    fs.rmSync(root, { recursive: true, force: true });
  });
  const SIZES = { a: 24, b: 1000, c: 4 } as const;
  /** A single-file checkpoint of U8 tensors a, b, c (in that order in the file) with known bytes. */
  const single = () => {
    const dir = path.join(root, `single${k++}`);
    fs.mkdirSync(dir);
    const data = Object.fromEntries(Object.entries(SIZES).map(([n, s], i) => [n, pattern(s, i + 1)]));
    writeSafetensors(
      path.join(dir, "model.safetensors"),
      Object.fromEntries(
        Object.entries(data).map(([n, d]) => [n, { dtype: "U8", shape: [d.length], data: d }]),
      ),
    );
    const ckpt = openCheckpoint(dir);
    dirs.push(ckpt);
    return { dir, ckpt, data };
  };
  const isShared = (b: Uint8Array) => b.buffer instanceof SharedArrayBuffer;

  it("serves fetched tensors from shared buffers holding the file's bytes; the rest by plain reads", async () => {
    const { ckpt, data } = single();
    const pf = new Prefetcher(ckpt);
    pf.fetch("b");
    expect(pf.held).toBe(1000);
    await pf.ready(["b", "a"]); // a: fetched by ready
    expect(pf.held).toBe(1024);
    const view = pf.view();
    for (const n of ["a", "b"]) {
      const got = view.read(n);
      expect(isShared(got)).toBe(true);
      expect(got).toEqual(data[n]);
      expect(got.byteLength).toBe(data[n].length);
    }
    const c = view.read("c");
    expect(isShared(c)).toBe(false);
    expect(c).toEqual(data.c);
    await pf.close();
  });

  it("fetches a tensor once: a second fetch or ready reads nothing more", async () => {
    const { ckpt } = single();
    const pf = new Prefetcher(ckpt);
    pf.fetch("b");
    pf.fetch("b");
    await pf.ready(["b", "b"]);
    expect(pf.held).toBe(1000);
    const first = pf.view().read("b");
    await pf.ready(["b"]);
    expect(pf.view().read("b")).toBe(first);
    await pf.close();
  });

  it("the view passes everything else to the checkpoint, and its close() leaves the checkpoint open", async () => {
    const { dir, ckpt } = single();
    const pf = new Prefetcher(ckpt);
    const view = pf.view();
    expect(view.dir).toBe(dir);
    expect(view.names()).toEqual(["a", "b", "c"]);
    expect(view.has("b")).toBe(true);
    expect(view.has("z")).toBe(false);
    expect(view.info("b")).toEqual(ckpt.info("b"));
    view.close();
    let notFloat = ""; // a is U8: the checkpoint's own refusal, passed through
    try {
      ckpt.readF32("a");
    } catch (e) {
      notFloat = (e as Error).message;
    }
    expect(notFloat).not.toBe("");
    expect(() => view.readF32("a")).toThrow(notFloat);
    expect(view.read("a")).toEqual(ckpt.read("a")); // still open
    await pf.close();
  });

  it("release returns the buffer to the pool and later reads go to the file; unknown names change nothing", async () => {
    const { ckpt, data } = single();
    const pf = new Prefetcher(ckpt);
    await pf.ready(["a", "b"]);
    const b = pf.view().read("b");
    pf.release("b");
    expect(pf.held).toBe(24);
    pf.release("b"); // twice
    pf.release("c"); // never fetched
    pf.release("nope");
    expect(pf.held).toBe(24);
    const again = pf.view().read("b");
    expect(isShared(again)).toBe(false);
    expect(again).toEqual(data.b);
    expect(pf.pool.take(1000)).toBe(b.buffer); // idle in the pool now
    // fetched again after release: read anew (into a fresh buffer, the old one being taken above)
    await pf.ready(["b"]);
    expect(pf.held).toBe(1024);
    expect(pf.view().read("b")).toEqual(data.b);
    expect(pf.view().read("b").buffer).not.toBe(b.buffer);
    await pf.close();
  });

  it("a held piece keeps its buffer out of the pool until its last holder lets go", async () => {
    const { ckpt } = single();
    const pf = new Prefetcher(ckpt);
    await pf.ready(["b"]);
    const b = pf.view().read("b");
    const piece = b.subarray(100, 200); // what a rank file writes
    const give1 = pf.hold(piece);
    const give2 = pf.hold(b);
    expect(give1).toBeTypeOf("function");
    expect(give2).toBeTypeOf("function");
    expect(pf.hold(new Uint8Array(1000))).toBeUndefined(); // not the prefetcher's
    expect(pf.hold(new Uint8Array(new SharedArrayBuffer(1000)))).toBeUndefined();
    pf.release("b");
    expect(pf.held).toBe(1000);
    expect(pf.pool.take(1000)).not.toBe(b.buffer);
    give1!();
    expect(pf.held).toBe(1000);
    expect(pf.pool.take(1000)).not.toBe(b.buffer);
    give2!();
    expect(pf.held).toBe(0);
    expect(pf.pool.take(1000)).toBe(b.buffer);
    // released and let go: no longer the prefetcher's
    expect(pf.hold(b)).toBeUndefined();
    await pf.close();
  });

  it("reuses an idle buffer of the pool for the next fetch, viewing only the tensor's bytes", async () => {
    const { ckpt, data } = single();
    const pf = new Prefetcher(ckpt);
    const parked = new SharedArrayBuffer(40); // ≤ 2 × 24: fits a
    new Uint8Array(parked).fill(0xee);
    pf.pool.give(parked);
    await pf.ready(["a"]);
    const a = pf.view().read("a");
    expect(a.buffer).toBe(parked);
    expect(a.byteOffset).toBe(0);
    expect(a.byteLength).toBe(24);
    expect(a).toEqual(data.a);
    expect(pf.held).toBe(24); // the tensor's size, not the buffer's
    pf.release("a");
    expect(pf.held).toBe(0);
    await pf.close();
  });

  it("a tensor over 32 MiB, read in pieces, arrives whole; bytes on both sides of each piece's edge", async () => {
    const dir = path.join(root, "big");
    fs.mkdirSync(dir);
    const n = 64 * MiB + 37; // three pieces: 32 MiB, 32 MiB, 37 bytes
    const big = pattern(n, 9);
    const small = pattern(5, 3);
    writeSafetensors(path.join(dir, "model.safetensors"), {
      small: { dtype: "U8", shape: [5], data: small },
      big: { dtype: "U8", shape: [n], data: big },
    });
    const ckpt = openCheckpoint(dir);
    dirs.push(ckpt);
    const pf = new Prefetcher(ckpt);
    await pf.ready(["big", "small"]);
    const got = pf.view().read("big");
    expect(got.byteLength).toBe(n);
    expect(Buffer.compare(Buffer.from(got.buffer, got.byteOffset, n), Buffer.from(big.buffer))).toBe(0);
    expect(pf.view().read("small")).toEqual(small);
    pf.release("big");
    await pf.close();
  });

  it("reads each shard through its own file, opened once, all closed by close()", async () => {
    const dir = path.join(root, "sharded");
    fs.mkdirSync(dir);
    const x = pattern(16, 5);
    const y = pattern(8, 6);
    const z = pattern(12, 7);
    writeSafetensors(path.join(dir, "s1.safetensors"), {
      x: { dtype: "U8", shape: [16], data: x },
      z: { dtype: "U8", shape: [12], data: z },
    });
    writeSafetensors(path.join(dir, "s2.safetensors"), { y: { dtype: "U8", shape: [8], data: y } });
    fs.writeFileSync(
      path.join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: { x: "s1.safetensors", y: "s2.safetensors", z: "s1.safetensors" } }),
    );
    const ckpt = openCheckpoint(dir);
    dirs.push(ckpt);
    const open = () => fs.readdirSync("/proc/self/fd").length;
    const before = open();
    const pf = new Prefetcher(ckpt);
    await pf.ready(["x", "y", "z"]);
    expect(open()).toBe(before + 2); // one per shard
    expect(pf.view().read("x")).toEqual(x);
    expect(pf.view().read("y")).toEqual(y);
    expect(pf.view().read("z")).toEqual(z);
    await pf.close();
    expect(open()).toBe(before);
    await pf.close(); // twice: nothing left to close
    expect(open()).toBe(before);
  });

  it("a file cut short after opening: ready() refuses with where the bytes ran out", async () => {
    const { dir, ckpt, data } = single();
    const file = path.join(dir, "model.safetensors");
    const info = ckpt.info("c");
    // c (4 bytes) is last in the file: keep 1 of them
    fs.truncateSync(file, info.fileOffset + 1);
    const pf = new Prefetcher(ckpt);
    await expect(pf.ready(["c"])).rejects.toThrow(
      new CheckpointError(file, `truncated: expected 4 bytes at offset ${info.fileOffset}, got 1`),
    );
    // b, whole in the file, still reads
    await pf.ready(["b"]);
    expect(pf.view().read("b")).toEqual(data.b);
    await pf.close();
  });

  it("close() waits for reads still queued: they complete on the file they were made for", async () => {
    // libuv's pool threads are all held (each opening a FIFO no writer has opened yet), so the prefetcher's
    // reads stay queued while close() is called, as after a build that failed with reads queued ahead.
    // Closing at once (the old close) left them to run on a closed descriptor: EBADF, or another file's.
    const { ckpt, data } = single();
    const threads = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
    const fifos = Array.from({ length: threads }, (_, i) => path.join(root, `fifo${k}-${i}`));
    k++;
    for (const f of fifos) execFileSync("mkfifo", [f]);
    const blocked = fifos.map(
      (f) => new Promise<number>((res, rej) => fs.open(f, "r", (e, fd) => (e ? rej(e) : res(fd)))),
    );
    const pf = new Prefetcher(ckpt);
    const read = pf.ready(["b"]);
    let closed = false;
    const closing = pf.close().then(() => {
      closed = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    expect(closed).toBe(false); // still waiting on the queued read
    for (const f of fifos) fs.closeSync(fs.openSync(f, "w")); // lets the pool threads go
    for (const fd of await Promise.all(blocked)) fs.closeSync(fd);
    await read;
    expect(pf.view().read("b")).toEqual(data.b);
    await closing;
    expect(closed).toBe(true);
  });

  it("an unknown tensor is refused by the checkpoint's own message", async () => {
    const { ckpt } = single();
    const pf = new Prefetcher(ckpt);
    let want = "";
    try {
      ckpt.info("nope");
    } catch (e) {
      want = (e as Error).message;
    }
    expect(want).not.toBe("");
    await expect(pf.ready(["nope"])).rejects.toThrow(want);
    await pf.close();
  });
});
