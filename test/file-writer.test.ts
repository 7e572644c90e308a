// FileWriter (src/engine/file-writer.ts), the positional writes of the engine writer's rank files: on
// libuv's pool (small builds) and on its worker thread (large ones). The bytes land where asked and
// nowhere else, in calls of at most WRITE_CALL_BYTES, short writes continued, errors reported.
import * as fs from "node:fs";
import { createRequire, syncBuiltinESMExports } from "node:module";
import * as path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { FileWriter, WRITE_CALL_BYTES } from "../src/engine/file-writer.ts";
import { tmpDir } from "./fixtures.ts";

const cjsFs = createRequire(import.meta.url)("node:fs") as typeof fs;
const realWrite = cjsFs.write;

afterEach(() => {
  cjsFs.write = realWrite;
  syncBuiltinESMExports();
});

/** Counts fs.write calls (libuv's pool) from now on; the worker's writeSync calls are not seen. */
function countPoolWrites(): { n: number } {
  const c = { n: 0 };
  cjsFs.write = ((...a: Parameters<typeof fs.write>) => {
    c.n++;
    return (realWrite as (...x: unknown[]) => void)(...a);
  }) as typeof fs.write;
  syncBuiltinESMExports();
  return c;
}

function bytes(n: number, seed: number, shared = false): Uint8Array {
  const b = new Uint8Array(shared ? new SharedArrayBuffer(n) : new ArrayBuffer(n));
  let x = seed;
  for (let i = 0; i < n; i++) b[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return b;
}

/** A file of `n` bytes of 0xee, opened for writing. */
function openFile(n: number): { file: string; fd: number } {
  const file = path.join(tmpDir(), "rank0.engine");
  fs.writeFileSync(file, Buffer.alloc(n, 0xee));
  return { file, fd: fs.openSync(file, "r+") };
}

/** What the file should hold: `n` bytes of 0xee with `pieces` one after another from `pos`. */
function expected(n: number, pieces: Uint8Array[], pos: number): Buffer {
  const want = Buffer.alloc(Math.max(n, pos + pieces.reduce((a, b) => a + b.length, 0)), 0xee);
  for (const p of pieces) {
    want.set(p, pos);
    pos += p.length;
  }
  return want;
}

describe("FileWriter on libuv's pool (small builds)", () => {
  it("writes the pieces one after another from the position, in calls of at most WRITE_CALL_BYTES", async () => {
    expect(WRITE_CALL_BYTES).toBe(128 * 1024); // the measured size the comment gives
    const calls: { len: number; pos: number }[] = [];
    cjsFs.write = ((fd: number, b: Uint8Array, off: number, len: number, pos: number, cb: never) => {
      calls.push({ len, pos });
      return realWrite(fd, b, off, len, pos, cb);
    }) as typeof fs.write;
    syncBuiltinESMExports();
    const { file, fd } = openFile(1000);
    const pieces = [
      bytes(10, 1),
      bytes(2 * WRITE_CALL_BYTES + 17, 2),
      bytes(WRITE_CALL_BYTES, 3),
      bytes(1, 4),
    ];
    const w = new FileWriter(false);
    await w.write(fd, pieces, 333);
    await w.close();
    fs.closeSync(fd);
    expect(fs.readFileSync(file).equals(expected(1000, pieces, 333))).toBe(true);
    // Each call at most WRITE_CALL_BYTES, at the position where the last one ended.
    expect(calls.map((c) => c.len)).toEqual([
      10,
      WRITE_CALL_BYTES,
      WRITE_CALL_BYTES,
      17,
      WRITE_CALL_BYTES,
      1,
    ]);
    let pos = 333;
    for (const c of calls) {
      expect(c.pos).toBe(pos);
      pos += c.len;
    }
  });

  it("continues a short write where it stopped", async () => {
    cjsFs.write = ((fd: number, b: Uint8Array, off: number, len: number, pos: number, cb: never) =>
      realWrite(fd, b, off, Math.max(1, len >> 1), pos, cb)) as typeof fs.write;
    syncBuiltinESMExports();
    const { file, fd } = openFile(50);
    const pieces = [bytes(1000, 5), bytes(77, 6)];
    const w = new FileWriter(false);
    await w.write(fd, pieces, 20);
    fs.closeSync(fd);
    expect(fs.readFileSync(file).equals(expected(50, pieces, 20))).toBe(true);
  });

  it("rejects with the write's error", async () => {
    const { fd } = openFile(10);
    fs.closeSync(fd);
    await expect(new FileWriter(false).write(fd, [bytes(10, 1)], 0)).rejects.toThrow(/EBADF/);
  });
});

describe("FileWriter on its worker thread (large builds)", () => {
  it("writes shared and ordinary buffers (views at an offset too) where asked", async () => {
    const { file, fd } = openFile(4096);
    const whole = bytes(3 * WRITE_CALL_BYTES, 9);
    const view = whole.subarray(1000, 1000 + WRITE_CALL_BYTES + 5); // a view into a larger ordinary buffer
    const pieces = [bytes(300_000, 7, true), view, bytes(3, 8)];
    const pool = countPoolWrites();
    const w = new FileWriter(true);
    await w.write(fd, pieces, 100);
    // Two writes in flight at once, each answered for itself.
    const more = [bytes(500, 10, true)];
    const later = [bytes(200, 11)];
    const end = 100 + pieces.reduce((a, b) => a + b.length, 0);
    await Promise.all([w.write(fd, more, end), w.write(fd, later, end + 500)]);
    expect(pool.n).toBe(0); // all written by the worker
    await w.close();
    fs.closeSync(fd);
    expect(fs.readFileSync(file).equals(expected(4096, [...pieces, ...more, ...later], 100))).toBe(true);
  });

  it("rejects a failed write with the worker's message, and goes on with the next one", async () => {
    const { file, fd } = openFile(10);
    const w = new FileWriter(true);
    try {
      await expect(w.write(12345, [bytes(10, 1)], 0)).rejects.toThrow(/^EBADF: bad file descriptor, write$/);
      const p = [bytes(10, 2)];
      await w.write(fd, p, 0);
      expect(fs.readFileSync(file).equals(expected(10, p, 0))).toBe(true);
    } finally {
      await w.close();
      fs.closeSync(fd);
    }
  });

  it("a worker that fails rejects the writes waiting on it", async () => {
    const { fd } = openFile(10);
    const w = new FileWriter(true);
    try {
      const a = w.write(fd, [bytes(10, 1)], 0);
      const b = w.write(fd, [bytes(10, 2)], 0);
      // What a crash of the worker thread emits (its 'error' event), before either write is answered.
      (w as unknown as { worker: { emit(e: string, x: Error): void } }).worker.emit(
        "error",
        new Error("worker died"),
      );
      await expect(a).rejects.toThrow("worker died");
      await expect(b).rejects.toThrow("worker died");
    } finally {
      await w.close();
      fs.closeSync(fd);
    }
  });

  it("after close(), writes go to libuv's pool; close() twice is fine", async () => {
    const { file, fd } = openFile(10);
    const w = new FileWriter(true);
    await w.close();
    await w.close();
    const pool = countPoolWrites();
    const p = [bytes(10, 3)];
    await w.write(fd, p, 5);
    expect(pool.n).toBe(1);
    fs.closeSync(fd);
    expect(fs.readFileSync(file).equals(expected(10, p, 5))).toBe(true);
  });
});
