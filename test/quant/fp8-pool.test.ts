// FP8 quantisation on worker threads (src/quant/fp8-pool.ts), as --quant fp8 builds of large models run it:
// bit for bit the main thread's quantiser (src/quant/fp8-rows.ts, itself checked against quantizeToBytes in
// fp8-rows.test.ts), for bf16, f16 and fp32 sources concatenated along rows, with NaN, ±inf, zero and
// subnormal rows, and with a source in ordinary memory (quantised on the calling thread instead).
// Then the pool's own logic against that oracle: rows split over 1, 2 or 3 workers (row counts that do not
// divide, fewer rows than workers, part boundaries inside a slice, rows whose length is not a multiple of 16,
// output views at an offset); which thread quantises (below 2^18 elements, with no workers, after close(), or
// with anything in ordinary memory: the calling thread); a worker's exception rejecting the call; a failed
// worker taking no more jobs; close() while a weight is being quantised.
import { afterAll, describe, expect, it } from "vitest";
import { Fp8Pool } from "../../src/quant/fp8-pool.ts";
import { quantizeFp8Rows, type SourceRows } from "../../src/quant/fp8-rows.ts";

const K = 1024;
const pool = new Fp8Pool(2);
afterAll(() => pool.close());

function halfRows(rows: number, seed: number, shared = true): Uint16Array {
  const d = shared ? new Uint16Array(new SharedArrayBuffer(rows * K * 2)) : new Uint16Array(rows * K);
  let x = seed;
  for (let i = 0; i < d.length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    d[i] = x >>> 16; // every bit pattern: NaNs, infinities, subnormals included
  }
  for (let j = 0; j < K; j++) {
    d[j] = 0; // a zero row: scale 1
    d[K + j] = (0x0001 + j) & 0x03ff; // subnormal f16 / tiny bf16
    d[2 * K + j] = j === 7 ? 0x7c00 : 0x3c00; // one +inf in f16 (a huge finite in bf16)
  }
  return d;
}

function f32Rows(rows: number): Float32Array {
  const d = new Float32Array(new SharedArrayBuffer(rows * K * 4));
  for (let i = 0; i < d.length; i++) d[i] = Math.sin(i) * (i % 3 === 0 ? 1e-3 : 100);
  d[5] = Number.NaN;
  d[K + 9] = Number.NEGATIVE_INFINITY;
  return d;
}

async function both(parts: SourceRows[]): Promise<void> {
  const n = parts.reduce((a, p) => a + p.rows, 0);
  const want = new Uint8Array(n * K);
  const wantScales = new Float32Array(n);
  quantizeFp8Rows(parts, K, want, wantScales);
  const got = new Uint8Array(new SharedArrayBuffer(n * K));
  const scales = new Float32Array(new SharedArrayBuffer(n * 4));
  await pool.quantize(parts, K, got, scales);
  expect(Buffer.from(got).equals(Buffer.from(want))).toBe(true);
  expect(Buffer.from(scales.buffer).equals(Buffer.from(wantScales.buffer))).toBe(true);
}

describe("FP8 quantisation on worker threads", () => {
  it("equals the main thread's, bit for bit, over concatenated bf16 / f16 / fp32 sources", async () => {
    await both([
      { dtype: "BF16", data: halfRows(300, 1), rows: 300 },
      { dtype: "F16", data: halfRows(257, 2), rows: 257 },
      { dtype: "F32", data: f32Rows(65), rows: 65 },
    ]);
  });

  it("quantises sources in ordinary memory on the calling thread, with the same numbers", async () => {
    await both([{ dtype: "BF16", data: halfRows(400, 3, false), rows: 400 }]);
  });
});

// ---- the pool's splitting, routing, failures and shutdown ----

type Dtype = SourceRows["dtype"];
/** 2^18: from this many elements a weight goes to the workers (the file's WORKER_FROM_ELEMS). */
const FROM = 1 << 18;

/**
 * `rows` rows of `k` random 16- or 32-bit patterns (NaN, ±inf, subnormals, both signs), in a SharedArrayBuffer
 * unless `shared` is false; row 0 all zero, row 1 subnormal (f16) / tiny, row 2 with one infinity, row 3 with
 * one NaN where the part has that many rows.
 */
function source(dtype: Dtype, rows: number, k: number, seed: number, shared = true): SourceRows {
  const n = rows * k;
  const bytes = dtype === "F32" ? 4 * n : 2 * n;
  const buf = shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes);
  let x = seed >>> 0;
  const next = () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return x;
  };
  if (dtype === "F32") {
    const bits = new Uint32Array(buf);
    for (let i = 0; i < n; i++) {
      // mostly ordinary magnitudes (exponent near 127), some of every exponent
      const r = next();
      bits[i] = i % 7 === 0 ? r : (r & 0x807fffff) | ((120 + (r % 16)) << 23);
    }
    for (let j = 0; j < k; j++) {
      if (rows > 0) bits[j] = j % 2 ? 0x80000000 : 0; // ±0
      if (rows > 1) bits[k + j] = (j + 1) | (j % 2 ? 0x80000000 : 0); // subnormals
      if (rows > 2 && j === 3) bits[2 * k + j] = 0xff800000; // -inf
      if (rows > 3 && j === k - 1) bits[3 * k + j] = 0x7fc00000; // NaN
    }
    return { dtype, data: new Float32Array(buf), rows };
  }
  const h = new Uint16Array(buf);
  for (let i = 0; i < n; i++) h[i] = next() >>> 16;
  const inf = dtype === "F16" ? 0x7c00 : 0x7f80;
  for (let j = 0; j < k; j++) {
    if (rows > 0) h[j] = 0;
    if (rows > 1) h[k + j] = ((j % 0x3ff) + 1) | (j % 2 ? 0x8000 : 0);
    if (rows > 2) h[2 * k + j] = j === 1 ? inf : 0x3c00;
    if (rows > 3) h[3 * k + j] = j === 2 ? inf + 1 : 0x3c00;
  }
  return { dtype, data: h, rows };
}

/** Values and scales views at an offset into a larger buffer, filled with a pattern no quantiser writes
 * everywhere (scales NaN: every quantised row's scale is finite), and a check that the bytes around them stay. */
function outputs(n: number, k: number, shared: { values?: boolean; scales?: boolean } = {}) {
  const mk = (bytes: number, sab = true) => (sab ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
  const vbuf = new Uint8Array(mk(n * k + 48, shared.values ?? true));
  vbuf.fill(0xa5);
  const sbuf = new Float32Array(mk(4 * n + 32, shared.scales ?? true));
  sbuf.fill(Number.NaN);
  const values = new Uint8Array(vbuf.buffer, 16, n * k);
  const scales = new Float32Array(sbuf.buffer, 16, n);
  const untouched = () => {
    const around = [...vbuf.subarray(0, 16), ...vbuf.subarray(16 + n * k)];
    expect(around.every((b) => b === 0xa5)).toBe(true);
    expect([...sbuf.subarray(0, 4), ...sbuf.subarray(4 + n)].every(Number.isNaN)).toBe(true);
  };
  return { values, scales, untouched };
}

/** The pool's values and scales against quantizeFp8Rows on this thread, byte for byte. */
async function matches(
  p: Fp8Pool,
  parts: SourceRows[],
  k: number,
  shared?: { values?: boolean; scales?: boolean },
) {
  const n = parts.reduce((a, q) => a + q.rows, 0);
  const want = new Uint8Array(n * k);
  const wantScales = new Float32Array(n);
  quantizeFp8Rows(parts, k, want, wantScales);
  const o = outputs(n, k, shared);
  await within(10_000, p.quantize(parts, k, o.values, o.scales));
  const badRows: number[] = [];
  for (let r = 0; r < n; r++) {
    const same =
      Object.is(o.scales[r], wantScales[r]) &&
      Buffer.from(o.values.subarray(r * k, (r + 1) * k)).equals(want.subarray(r * k, (r + 1) * k));
    if (!same) badRows.push(r);
  }
  expect(badRows).toEqual([]);
  o.untouched();
}

/** `p`, or a rejection when it has not settled after `ms` (a pool that loses a job leaves it pending forever). */
function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`still pending after ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

/** A part the kernels cannot quantise: its dtype has no kernel, so whichever thread runs it throws. */
const broken = (rows: number, k: number, shared = true): SourceRows =>
  ({ ...source("BF16", rows, k, 9, shared), dtype: "Q8" }) as unknown as SourceRows;

/** Which thread quantised a call: the stack of the error a broken part throws tells (the worker's script, or not). */
async function thread(
  p: Fp8Pool,
  rows: number,
  k: number,
  o = outputs(rows, k),
): Promise<"worker" | "caller"> {
  const e = await within(10_000, p.quantize([broken(rows, k)], k, o.values, o.scales)).then(
    () => expect.fail("a broken part was quantised"),
    (e: Error) => e,
  );
  expect(e.message).toMatch(/not a function/);
  return /fp8-worker\.mjs/.test(String(e.stack)) ? "worker" : "caller";
}

/** A fresh pool of `size` workers for `f`, closed afterwards. */
async function withPool<T>(size: number, f: (p: Fp8Pool) => Promise<T>): Promise<T> {
  const p = new Fp8Pool(size);
  try {
    return await f(p);
  } finally {
    await p.close();
  }
}

describe("Fp8Pool: the rows split over the workers", () => {
  it("rows of 1000 (not a multiple of 16: the workers' JavaScript loop and the tables they were sent)", async () => {
    // 263 rows over 2 workers: 131 + 132, the split inside the f16 part, the 1-row fp32 part in the first slice
    await matches(
      pool,
      [source("BF16", 100, 1000, 1), source("F32", 1, 1000, 2), source("F16", 162, 1000, 3)],
      1000,
    );
  });

  it("131 rows over 3 workers (43 + 44 + 44), one-row parts at the slice boundaries", async () => {
    await withPool(3, async (p) => {
      const parts = [
        source("F16", 43, 2048, 4),
        source("BF16", 1, 2048, 5),
        source("F32", 44, 2048, 6),
        source("BF16", 43, 2048, 7),
      ];
      await matches(p, parts, 2048);
      // twice on the same pool, and two calls at once: each its own rows
      const other = [source("F32", 5, 2048, 8), source("F16", 128, 2048, 9)];
      await Promise.all([matches(p, parts, 2048), matches(p, other, 2048)]);
    });
  });

  it("fewer rows than workers: one row of 2^18, two rows over 3 workers", async () => {
    await matches(pool, [source("F16", 1, FROM, 10)], FROM);
    await withPool(3, async (p) => {
      await matches(
        p,
        [source("BF16", 1, FROM / 2 + 16, 11), source("F32", 1, FROM / 2 + 16, 12)],
        FROM / 2 + 16,
      );
    });
  });

  it("one worker; exactly 2^18 elements; an empty part in the middle; no rows at all", async () => {
    await withPool(1, (p) => matches(p, [source("BF16", 150, 2048, 13), source("F16", 151, 2048, 14)], 2048));
    await matches(
      pool,
      [source("F32", 128, 1024, 15), source("F16", 0, 1024, 16), source("F32", 128, 1024, 17)],
      K,
    );
    await matches(pool, [], K);
  });

  it("outputs in ordinary memory are quantised on the calling thread (a worker would write a copy)", async () => {
    const parts = [source("BF16", 300, K, 18)];
    await matches(pool, parts, K, { values: false });
    await matches(pool, parts, K, { scales: false });
  });
});

describe("Fp8Pool: which thread quantises", () => {
  it("from 2^18 elements on a worker, below on the calling thread", async () => {
    await withPool(1, async (p) => expect(await thread(p, 1, FROM)).toBe("worker"));
    await withPool(1, async (p) => expect(await thread(p, 256, 1024)).toBe("worker"));
    await withPool(1, async (p) => expect(await thread(p, 1, FROM - 16)).toBe("caller"));
    await withPool(1, async (p) => expect(await thread(p, 255, 1024)).toBe("caller"));
  });

  it("below 2^18 elements the numbers are there when quantize returns, before it is awaited", async () => {
    const parts = [source("F16", 255, 1024, 19)];
    const want = new Uint8Array(255 * 1024);
    const wantScales = new Float32Array(255);
    quantizeFp8Rows(parts, 1024, want, wantScales);
    const o = outputs(255, 1024);
    const done = pool.quantize(parts, 1024, o.values, o.scales);
    expect(Buffer.from(o.values).equals(want)).toBe(true);
    expect([...o.scales]).toEqual([...wantScales]);
    await done;
  });

  it("on the calling thread with no workers, or a source, values or scales in ordinary memory", async () => {
    await withPool(0, async (p) => {
      expect(await thread(p, 256, 1024)).toBe("caller");
      await matches(p, [source("BF16", 300, K, 20), source("F32", 7, K, 21)], K);
    });
    await withPool(1, async (p) => {
      const n = 256;
      const rejectedOn = async (parts: SourceRows[], o: ReturnType<typeof outputs>) => {
        const e: Error = await within(10_000, p.quantize(parts, 1024, o.values, o.scales)).then(
          () => expect.fail("a broken part was quantised"),
          (e: Error) => e,
        );
        return /fp8-worker\.mjs/.test(String(e.stack)) ? "worker" : "caller";
      };
      expect(await rejectedOn([broken(n, 1024, false)], outputs(n, 1024))).toBe("caller");
      expect(
        await rejectedOn([source("F16", 1, 1024, 1), broken(n, 1024, false)], outputs(n + 1, 1024)),
      ).toBe("caller");
      expect(await rejectedOn([broken(n, 1024)], outputs(n, 1024, { values: false }))).toBe("caller");
      expect(await rejectedOn([broken(n, 1024)], outputs(n, 1024, { scales: false }))).toBe("caller");
      // and the same pool, everything shared: its worker
      expect(await rejectedOn([broken(n, 1024)], outputs(n, 1024))).toBe("worker");
    });
  });

  it("after close(): on the calling thread, the same numbers", async () => {
    const p = new Fp8Pool(2);
    await p.close();
    expect(await thread(p, 256, 1024)).toBe("caller");
    await matches(p, [source("BF16", 300, K, 22)], K);
    await p.close(); // twice: nothing left to end
  });
});

describe("Fp8Pool: failures and shutdown", () => {
  it("an exception in a worker rejects the call with that error (not left pending)", async () => {
    await withPool(2, async (p) => {
      const o = outputs(256, 1024);
      const e: Error = await within(10_000, p.quantize([broken(256, 1024)], 1024, o.values, o.scales)).then(
        () => expect.fail("a broken part was quantised"),
        (e: Error) => e,
      );
      expect(e).toBeInstanceOf(TypeError);
      expect(e.stack).toMatch(/fp8-worker\.mjs/);
    });
  });

  it("a worker's exception fails the calls with a job on it, not another call on another worker", async () => {
    await withPool(2, async (p) => {
      // rows 0-127 on the first worker, 128-255 (which throw at once) on the second; at the same time one row of
      // 2^22 on the first alone, which it takes milliseconds to quantise
      const o = outputs(256, 1024);
      const failing = within(
        10_000,
        p.quantize([source("BF16", 128, 1024, 27), broken(128, 1024)], 1024, o.values, o.scales),
      );
      const fine = matches(p, [source("F32", 1, 16 * FROM, 28)], 16 * FROM);
      await expect(failing).rejects.toThrow(/not a function/);
      await fine;
    });
  });

  it("a worker that failed takes no more jobs: the next weights go to the others, then to this thread", async () => {
    await withPool(2, async (p) => {
      // rows 0-127 (the first worker's) quantise, rows 128-255 (the second's) throw
      const o = outputs(256, 1024);
      await expect(
        within(
          10_000,
          p.quantize([source("BF16", 128, 1024, 23), broken(128, 1024)], 1024, o.values, o.scales),
        ),
      ).rejects.toThrow(/not a function/);
      // the second worker ended with its exception: 300 rows on the first alone
      await matches(p, [source("F16", 300, K, 24)], K);
      expect(await thread(p, 256, 1024)).toBe("worker"); // the first one fails too
      await matches(p, [source("F32", 300, K, 25)], K); // none left: this thread
      expect(await thread(p, 256, 1024)).toBe("caller");
    });
  });

  it("close() while a weight is being quantised ends the workers and rejects the call", async () => {
    // closed in the same tick as the call: the new workers have not even loaded their script, let alone
    // quantised 4 M elements (0 when a worker ended before it started, 1 when stopped running)
    const p = new Fp8Pool(2);
    const o = outputs(4096, K);
    const call = p.quantize([source("BF16", 4096, K, 26)], K, o.values, o.scales);
    const closed = p.close();
    await expect(within(10_000, call)).rejects.toThrow(/^FP8 worker exited with code [01]$/);
    await closed;
  });
});
