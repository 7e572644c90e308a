// RankFile (src/engine/rank-file.ts) with a hash pool and a file writer that the test drives: which bytes go
// to which write (8 MiB batches at their file positions) and to which hash chunk (16 MiB), when each pushed
// piece is handed back (only once written and hashed), what inFlight / busy / settle report meanwhile, and
// what happens when a write or a hash fails. The oracle for the content hash is its definition written out
// here with node:crypto (SHA-256 over the SHA-256 of each 16 MiB chunk). Files live in this file's own
// temporary folder.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import type { FileWriter } from "../src/engine/file-writer.ts";
import type { HashPool } from "../src/engine/hash-pool.ts";
import { RankFile } from "../src/engine/rank-file.ts";

const MiB = 1 << 20;
const CHUNK = 16 * MiB; // HASH_CHUNK_BYTES, the engine format's chunk size
const BATCH = 8 * MiB; // the write batch of rank-file.ts

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-rank-file-"));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
const newPath = () => path.join(tmp, `rank${seq++}.engine`);
const openFds = () => fs.readdirSync("/proc/self/fd").length;

/** The definition: SHA-256 over the SHA-256 of each chunk (one empty chunk for an empty file). */
function reference(b: Uint8Array): string {
  const outer = createHash("sha256");
  let o = 0;
  do {
    outer.update(
      createHash("sha256")
        .update(b.subarray(o, o + CHUNK))
        .digest(),
    );
    o += CHUNK;
  } while (o < b.length);
  return outer.digest("hex");
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed;
  for (let i = 0; i < n; i++) b[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;
  return b;
}
const concat = (bufs: readonly Uint8Array[]) => new Uint8Array(Buffer.concat(bufs));

interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: Error) => void;
}
function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: Error) => void;
  const promise = new Promise<T>((a, b) => {
    resolve = a;
    reject = b;
  });
  return { promise, resolve, reject };
}
/** Lets settled promises' callbacks run. */
const ticks = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

/**
 * A HashPool and a FileWriter whose jobs finish when the test says (or at once, with `auto`). The writer
 * writes the bytes at once, at the position asked, so the file on disk shows what was asked for.
 */
class Fakes {
  auto = false;
  readonly hashes: { bytes: Uint8Array; job: Deferred<Buffer> }[] = [];
  readonly writes: { pos: number; bytes: Uint8Array; job: Deferred<void> }[] = [];
  readonly pool = {
    digest: (pieces: Uint8Array[]) => {
      const bytes = concat(pieces);
      const job = deferred<Buffer>();
      this.hashes.push({ bytes, job });
      if (this.auto) this.finishHash(this.hashes.length - 1);
      return job.promise;
    },
  } as unknown as HashPool;
  readonly writer = {
    write: (fd: number, bufs: Uint8Array[], pos: number) => {
      const bytes = concat(bufs);
      fs.writeSync(fd, bytes, 0, bytes.length, pos);
      const job = deferred<void>();
      this.writes.push({ pos, bytes, job });
      if (this.auto) job.resolve();
      return job.promise;
    },
  } as unknown as FileWriter;
  finishHash(i: number) {
    const h = this.hashes[i];
    h.job.resolve(createHash("sha256").update(h.bytes).digest());
  }
  finishAll() {
    this.auto = true;
    this.hashes.forEach((_, i) => this.finishHash(i));
    for (const w of this.writes) w.job.resolve();
  }
}

describe("RankFile", () => {
  it("writes 8 MiB batches at their file positions and hashes 16 MiB chunks", async () => {
    const fx = new Fakes();
    const file = newPath();
    const written: number[] = [];
    const f = new RankFile(file, fx.pool, fx.writer, (n) => written.push(n));
    const data = bytes(17 * MiB + 1, 1);
    let at = 0;
    const push = (n: number) => {
      f.push(data.subarray(at, at + n));
      at += n;
    };
    push(3 * MiB);
    expect(fx.writes).toHaveLength(0); // under a batch: kept
    push(5 * MiB);
    // Exactly one batch: written now, from position 0.
    expect(fx.writes.map((w) => [w.pos, w.bytes.length])).toEqual([[0, BATCH]]);
    push(1);
    expect(fx.writes).toHaveLength(1);
    push(9 * MiB);
    expect(fx.writes.map((w) => [w.pos, w.bytes.length])).toEqual([
      [0, BATCH],
      [BATCH, 9 * MiB + 1],
    ]);
    // The first chunk is cut at 16 MiB, across the pieces; the tail waits.
    expect(fx.hashes).toHaveLength(1);
    expect(Buffer.from(fx.hashes[0].bytes).equals(Buffer.from(data.subarray(0, CHUNK)))).toBe(true);
    expect(f.bytes).toBe(data.length);
    fx.finishAll();
    const r = await f.finish();
    expect(fx.hashes).toHaveLength(2);
    expect(Buffer.from(fx.hashes[1].bytes).equals(Buffer.from(data.subarray(CHUNK)))).toBe(true);
    expect(r).toEqual({ bytes: data.length, sha256: reference(data) });
    expect(f.written).toBe(data.length);
    expect(written).toEqual([BATCH, 9 * MiB + 1]);
    expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(data))).toBe(true);
  });

  it("hands a piece back only once it is written and every chunk it reaches is hashed; inFlight follows", async () => {
    const fx = new Fakes();
    const f = new RankFile(newPath(), fx.pool, fx.writer);
    const released: string[] = [];
    const p1 = bytes(MiB, 2);
    const p2 = bytes(15 * MiB + 10, 3); // completes the first chunk and starts the second
    const p3 = bytes(100, 4);
    f.push(p1, () => released.push("p1"));
    f.push(p2, () => released.push("p2"));
    f.push(p3, () => released.push("p3"));
    const total = p1.length + p2.length + p3.length;
    expect(fx.writes.map((w) => [w.pos, w.bytes.length])).toEqual([[0, CHUNK + 10]]); // p3 waits in a batch
    expect(fx.hashes.map((h) => h.bytes.length)).toEqual([CHUNK]);
    expect(f.busy).toBe(true);
    expect(f.inFlight).toBe(total);

    fx.writes[0].job.resolve();
    await f.settle();
    expect(released).toEqual([]); // written, not yet hashed
    expect(f.written).toBe(CHUNK + 10);
    expect(f.inFlight).toBe(total); // nothing is both written and hashed

    fx.finishHash(0);
    await f.settle();
    expect(released).toEqual(["p1"]); // p2's tail is in the unfinished second chunk
    expect(f.inFlight).toBe(total - CHUNK);
    expect(f.busy).toBe(false);

    // Copying the unfinished chunk releases p2 (written already), not p3 (its write is pending).
    f.detachChunk();
    expect(released).toEqual(["p1", "p2"]);
    p2.fill(0); // no longer read: the digest below would show it

    fx.finishAll();
    const r = await f.finish();
    expect(released).toEqual(["p1", "p2", "p3"]);
    expect(r.sha256).toBe(reference(concat([p1, bytes(15 * MiB + 10, 3), p3])));
    expect(f.inFlight).toBe(0);
    expect(f.busy).toBe(false);
  });

  it("detachChunk with no unfinished chunk, then more bytes, leaves the digest as defined", async () => {
    const fx = new Fakes();
    fx.auto = true;
    const f = new RankFile(newPath(), fx.pool, fx.writer);
    const data = bytes(CHUNK + 5, 5);
    f.push(data.subarray(0, CHUNK));
    f.detachChunk(); // the chunk just ended: nothing to copy
    f.push(data.subarray(CHUNK, CHUNK + 1));
    f.push(data.subarray(CHUNK + 1, CHUNK + 2)); // two pieces in the unfinished chunk, copied one after the other
    f.detachChunk();
    f.detachChunk();
    f.push(data.subarray(CHUNK + 2));
    expect((await f.finish()).sha256).toBe(reference(data));
    expect(fx.hashes.map((h) => h.bytes.length)).toEqual([CHUNK, 5]);
  });

  it("an empty push changes nothing and hands the buffer back at once", async () => {
    const fx = new Fakes();
    fx.auto = true;
    const f = new RankFile(newPath(), fx.pool, fx.writer);
    let back = 0;
    f.push(new Uint8Array(0), () => back++);
    expect(back).toBe(1);
    expect(f.bytes).toBe(0);
    f.push(new Uint8Array(0)); // no callback: fine too
    expect(f.busy).toBe(false);
    const r = await f.finish();
    // An empty file is one empty chunk: SHA-256 of SHA-256("") (the published double SHA-256 of "").
    expect(r).toEqual({
      bytes: 0,
      sha256: "5df6e0e2761359d30a8275058e299fcc0381534545f55cf43e41983f5d4c9456",
    });
    expect(fx.writes).toHaveLength(0);
  });

  it("a file of exactly one chunk has one hash, and padTo fills zeros up to a position", async () => {
    const fx = new Fakes();
    fx.auto = true;
    const file = newPath();
    const f = new RankFile(file, fx.pool, fx.writer);
    const head = bytes(10, 6);
    f.push(head);
    f.padTo(200_000); // more than the 64 KiB zero buffer
    expect(f.bytes).toBe(200_000);
    f.padTo(5); // behind: nothing
    f.padTo(200_000);
    expect(f.bytes).toBe(200_000);
    const tail = bytes(CHUNK - 200_000, 7);
    f.push(tail);
    const want = new Uint8Array(CHUNK);
    want.set(head);
    want.set(tail, 200_000);
    const r = await f.finish();
    expect(r).toEqual({ bytes: CHUNK, sha256: reference(want) });
    expect(fx.hashes).toHaveLength(1);
    expect(Buffer.from(fs.readFileSync(file)).equals(Buffer.from(want))).toBe(true);
  });

  it("finish closes the file; settle with nothing pending returns at once", async () => {
    const fx = new Fakes();
    fx.auto = true;
    const before = openFds();
    const f = new RankFile(newPath(), fx.pool, fx.writer);
    expect(openFds()).toBe(before + 1);
    await f.settle();
    f.push(bytes(1000, 8));
    await f.finish();
    expect(openFds()).toBe(before);
    await f.abort(); // a second close is harmless
    expect(openFds()).toBe(before);
  });
});

describe("RankFile failures", () => {
  it("a failed write is reported naming the file, by settle, by the next push and by finish (the first error)", async () => {
    const fx = new Fakes();
    const file = newPath();
    const before = openFds();
    const f = new RankFile(file, fx.pool, fx.writer);
    f.push(bytes(BATCH, 9));
    f.push(bytes(BATCH, 10));
    expect(fx.writes).toHaveLength(2);
    fx.writes[0].job.reject(new Error("ENOSPC: no space left on device, write"));
    await ticks();
    fx.writes[1].job.reject(new Error("EIO: i/o error, write"));
    await expect(f.settle()).rejects.toThrow(`${file}: ENOSPC: no space left on device, write`);
    expect(() => f.push(bytes(1, 11))).toThrow(`${file}: ENOSPC: no space left on device, write`);
    fx.finishAll();
    await expect(f.finish()).rejects.toThrow(`${file}: ENOSPC: no space left on device, write`);
    expect(openFds()).toBe(before); // closed all the same
  });

  it("a failed hash is reported the same way, and abort closes the file after waiting for what is pending", async () => {
    const fx = new Fakes();
    const file = newPath();
    const before = openFds();
    const f = new RankFile(file, fx.pool, fx.writer);
    f.push(bytes(CHUNK, 12));
    expect(fx.hashes).toHaveLength(1);
    fx.hashes[0].job.reject(new Error("hash worker exited"));
    await expect(f.settle()).rejects.toThrow(`${file}: hash worker exited`);
    expect(f.busy).toBe(true); // the write is still out
    let aborted = false;
    const a = f.abort().then(() => {
      aborted = true;
    });
    await ticks();
    expect(aborted).toBe(false);
    expect(openFds()).toBe(before + 1);
    fx.writes[0].job.resolve();
    await a;
    expect(openFds()).toBe(before);
  });
});
