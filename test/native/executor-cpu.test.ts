// The Executor over the native runtime (src/native/executor.ts) and openExecutor's choice of executor
// (src/executor/open.ts) without CUDA, over the stand-in addon of ./fake-addon.ts: what CudaExecutor asks the
// engine for (each sequence's start position from its own running length, all or last logits) and how it cuts the
// flat logits back into rows per sequence; loadVerified's content-hash check (chunked digests from the addon, a
// legacy whole-file SHA-256 streamed first, none without an entry or with verify false) and its refusal; the tp 1
// rule; and which executor --device cpu / cuda / auto opens with the addon there and not. The real addon: test-gpu/.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type EngineRank, openEngine } from "../../src/engine/reader.ts";
import { ABI_VERSION } from "../../src/native/binding.ts";
import { buildFixture, corruptLastWeightByte, tmpDir } from "../fixtures.ts";
import {
  ADDON_ENV,
  type Call,
  chunkDigestsOf,
  cudaInfo,
  fakeAddon,
  HANDLE,
  installAddon,
  useFakeAddonEnv,
} from "./fake-addon.ts";

type NativeExecutor = typeof import("../../src/native/executor.ts");
const fresh = (): Promise<NativeExecutor> => import("../../src/native/executor.ts");
const freshOpen = (): Promise<typeof import("../../src/executor/open.ts")> =>
  import("../../src/executor/open.ts");

let dir: string;
let corrupt: string;
let tp2: string;
const folders: string[] = [];

beforeAll(async () => {
  const o = { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 4 };
  dir = await buildFixture("llama", o);
  corrupt = await buildFixture("llama", o);
  tp2 = await buildFixture("llama", { ...o, tp: 2 });
  folders.push(path.dirname(dir), path.dirname(corrupt), path.dirname(tp2));
  corruptLastWeightByte(corrupt, openEngine(corrupt).config.ranks[0].file);
});
afterAll(() => {
  for (const f of folders) fs.rmSync(f, { recursive: true, force: true });
});

useFakeAddonEnv();

const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest();

/** A stand-in whose loadHashed returns the file's real chunk digests, as the addon computes them in its upload. */
function hashingAddon(extra: Record<string, unknown> = {}) {
  return fakeAddon({
    loadHashed: (file: string, o: unknown, chunk: number, n: number) => {
      calls.push(["loadHashed", file, o, chunk, n]);
      return { handle: HANDLE, digests: chunkDigestsOf(file, chunk) };
    },
    info: () => cudaInfo(),
    ...extra,
  });
}
// hashingAddon's loadHashed records into the calls of the addon it belongs to (set by install()).
let calls: Call[] = [];
function install(extra: Record<string, unknown> = {}): Call[] {
  const f = hashingAddon(extra);
  calls = f.calls;
  installAddon(f.addon);
  return f.calls;
}

/** The mismatch line of src/engine/hash.ts, written out. */
const mismatchLine = (got: string, want: string) =>
  `content hash ${got.slice(0, 12)}… does not match config.json (${want.slice(0, 12)}…): the file is corrupt or was modified`;

describe("cudaUnavailable", () => {
  it("why not without an addon file, or when the addon sees no device; nothing with one device", async () => {
    const missing = path.join(tmpDir(), "missing.node");
    process.env[ADDON_ENV] = missing;
    expect((await fresh()).cudaUnavailable()).toBe(
      "native runtime not built: run npm run build:native on a machine with CUDA 13 (nvcc, cuBLASLt)",
    );
    vi.resetModules();
    installAddon(fakeAddon({ deviceCount: () => 0 }).addon);
    expect((await fresh()).cudaUnavailable()).toBe(
      "no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)",
    );
    vi.resetModules();
    install();
    const n = await fresh();
    expect(n.cudaUnavailable()).toBeUndefined();
    expect(n.NATIVE_NOT_BUILT).toBe(
      "native runtime not built: run npm run build:native on a machine with CUDA 13 (nvcc, cuBLASLt)",
    );
  });
});

describe("CudaExecutor", () => {
  const V = 3;
  /** step: V logits per row, row r column c = 10 r + c, as many rows as the sequences ask for. */
  const stepAddon = () =>
    install({
      step: (h: unknown, seqs: { tokens: Int32Array; allLogits: boolean }[], want: unknown) => {
        calls.push(["step", h, seqs.map((s) => ({ ...s, tokens: [...s.tokens] })), want]);
        const rows = seqs.reduce((a, s) => a + (s.allLogits ? s.tokens.length : 1), 0);
        return {
          rows,
          vocab: V,
          logits: Float32Array.from({ length: rows * V }, (_, i) => 10 * ((i / V) | 0) + (i % V)),
        };
      },
    });
  const row = (r: number) => Float32Array.of(10 * r, 10 * r + 1, 10 * r + 2);

  it("one step: all, last or no logits per sequence, cut from the flat rows in order", async () => {
    const calls = stepAddon();
    const n = await fresh();
    const ex = n.openCudaExecutor(dir);
    expect(ex).toBeInstanceOf(n.CudaExecutor);
    expect(ex.vocabSize).toBe(512);
    calls.length = 0;
    const out = ex.step([
      { seqId: 1, tokens: [1, 2, 3], logits: "all" },
      { seqId: 2, tokens: [4, 5], logits: "last" },
      { seqId: 3, tokens: [6], logits: "none" },
      { seqId: 4, tokens: [7, 8], logits: "last" },
    ]);
    expect(calls).toEqual([
      [
        "step",
        HANDLE,
        [
          { id: 1, tokens: [1, 2, 3], startPos: 0, allLogits: true },
          { id: 2, tokens: [4, 5], startPos: 0, allLogits: false },
          { id: 3, tokens: [6], startPos: 0, allLogits: false },
          { id: 4, tokens: [7, 8], startPos: 0, allLogits: false },
        ],
        { logits: true },
      ],
    ]);
    expect([...out.keys()]).toEqual([1, 2, 3, 4]);
    expect(out.get(1)).toEqual([row(0), row(1), row(2)]);
    expect(out.get(2)).toEqual([row(3)]);
    expect(out.get(3)).toEqual([]);
    // the "none" sequence's row (4) is still there, skipped
    expect(out.get(4)).toEqual([row(5)]);
    expect(out.get(1)![0]).toBeInstanceOf(Float32Array);
  });

  it("each sequence starts where its own tokens ended; release forgets it (and frees it in the engine)", async () => {
    const calls = stepAddon();
    const ex = (await fresh()).openCudaExecutor(dir);
    ex.step([
      { seqId: 1, tokens: [1, 2, 3], logits: "last" },
      { seqId: 2, tokens: [4, 5], logits: "last" },
    ]);
    ex.step([{ seqId: 1, tokens: [9], logits: "last" }]);
    calls.length = 0;
    ex.step([
      { seqId: 2, tokens: [6], logits: "last" },
      { seqId: 1, tokens: [7, 8], logits: "all" },
    ]);
    const starts = () =>
      (calls.at(-1)![2] as { id: number; startPos: number }[]).map((s) => [s.id, s.startPos]);
    expect(starts()).toEqual([
      [2, 2],
      [1, 4],
    ]);
    ex.release(1);
    expect(calls.at(-1)).toEqual(["release", HANDLE, 1]);
    ex.step([
      { seqId: 1, tokens: [1], logits: "last" },
      { seqId: 2, tokens: [2], logits: "none" },
    ]);
    expect(starts()).toEqual([
      [1, 0],
      [2, 3],
    ]);
    calls.length = 0;
    ex.close();
    expect(calls).toEqual([["unload", HANDLE]]);
  });
});

describe("loadVerified", () => {
  const rank0 = (d: string): EngineRank => openEngine(d).ranks[0];

  it("a chunked hash: loadHashed with the entry's chunk size, the digests combined and compared", async () => {
    const calls = install();
    const n = await fresh();
    const r = rank0(dir);
    const chunk = r.entry!.hash!.chunk_bytes;
    const size = fs.statSync(r.file).size;
    const eng = n.loadVerified(r, { cudaGraphs: false });
    expect(eng.file).toBe(r.file);
    expect(calls[0]).toEqual([
      "loadHashed",
      r.file,
      { cudaGraphs: false, hashChunkBytes: chunk },
      chunk,
      Math.ceil(size / chunk),
    ]);
    expect(calls.some((c) => c[0] === "unload" || c[0] === "load")).toBe(false);
    // explicit verify: true is the same
    calls.length = 0;
    n.loadVerified(r, { verify: true });
    expect(calls[0][0]).toBe("loadHashed");
  });

  it("a digest that differs: the engine is unloaded and the load refused naming the file and both hashes", async () => {
    const calls = install();
    const n = await fresh();
    const r = rank0(corrupt);
    const want = r.entry!.hash!.sha256;
    // one chunk (the file is smaller than chunk_bytes): the engine digest is SHA-256 of its SHA-256
    const got = sha256(sha256(fs.readFileSync(r.file))).toString("hex");
    expect(got).not.toBe(want);
    let err: unknown;
    try {
      n.loadVerified(r);
    } catch (e) {
      err = e;
    }
    expect((err as Error).name).toBe("EngineError");
    expect((err as Error).message).toBe(`${r.file}: ${mismatchLine(got, want)}`);
    expect(calls.map((c) => c[0])).toEqual(["loadHashed", "loadStats", "unload"]);
    expect(calls.at(-1)).toEqual(["unload", HANDLE]);
  });

  it("verify false, or a rank without a config entry: a plain load with the options as given", async () => {
    const calls = install();
    const n = await fresh();
    const r = rank0(corrupt);
    n.loadVerified(r, { verify: false, maxSeqLen: 32 });
    expect(calls[0]).toEqual(["load", r.file, { verify: false, maxSeqLen: 32 }]);
    calls.length = 0;
    n.loadVerified({ ...r, entry: undefined }, { device: 1 });
    expect(calls[0]).toEqual(["load", r.file, { device: 1 }]);
    expect(calls.some((c) => c[0] === "loadHashed" || c[0] === "unload")).toBe(false);
  });

  it("an engine from before chunked hashes: its whole-file SHA-256 checked first, then a plain load", async () => {
    const calls = install();
    const n = await fresh();
    const r = rank0(dir);
    const whole = sha256(fs.readFileSync(r.file)).toString("hex");
    const legacy = (sha: string): EngineRank => ({
      ...r,
      entry: { file: r.entry!.file, bytes: r.entry!.bytes, sha256: sha },
    });
    n.loadVerified(legacy(whole), { cudaGraphs: true });
    expect(calls[0]).toEqual(["load", r.file, { cudaGraphs: true }]);
    expect(calls.some((c) => c[0] === "loadHashed")).toBe(false);
    calls.length = 0;
    const wrong = "0".repeat(64);
    let err: unknown;
    try {
      n.loadVerified(legacy(wrong));
    } catch (e) {
      err = e;
    }
    expect((err as Error).name).toBe("EngineError");
    expect((err as Error).message).toBe(`${r.file}: ${mismatchLine(whole, wrong)}`);
    // refused before the GPU is touched
    expect(calls).toEqual([]);
  });
});

describe("openCudaExecutor", () => {
  it("a tp 2 engine is refused before loading; tp 1 loads its rank 0 with the options", async () => {
    const calls = install();
    const n = await fresh();
    let err: unknown;
    try {
      n.openCudaExecutor(tp2);
    } catch (e) {
      err = e;
    }
    expect((err as Error).name).toBe("LimitError");
    expect((err as Error).message).toBe(
      `${tp2}: a tp 2 engine needs one process per GPU; the TypeScript CUDA executor runs tp 1 engines`,
    );
    expect(calls).toEqual([]);
    const ex = n.openCudaExecutor(dir, { verify: false, fp8ContextFmha: "off" });
    expect(ex.engine.file).toBe(path.join(dir, "rank0.engine"));
    expect(calls[0]).toEqual([
      "load",
      path.join(dir, "rank0.engine"),
      { verify: false, fp8ContextFmha: "off" },
    ]);
  });
});

describe("openExecutor with the stand-in addon", () => {
  it("--device cuda and auto open the CUDA executor, handing on verify and fp8ContextFmha", async () => {
    const calls = install();
    const { openExecutor } = await freshOpen();
    const n = await fresh();
    const rank = path.join(dir, "rank0.engine");
    const cuda = await openExecutor(corrupt, { device: "cuda", verify: false, fp8ContextFmha: "on" });
    expect(cuda).toBeInstanceOf(n.CudaExecutor);
    expect(calls[0]).toEqual([
      "load",
      path.join(corrupt, "rank0.engine"),
      { verify: false, fp8ContextFmha: "on" },
    ]);
    calls.length = 0;
    const auto = await openExecutor(dir, { device: "auto" });
    expect(auto).toBeInstanceOf(n.CudaExecutor);
    expect(calls[0][0]).toBe("loadHashed");
    expect(calls[0][1]).toBe(rank);
  });

  it("--device cpu opens the reference executor even with the addon there, with verify and the progress", async () => {
    const calls = install();
    const { openExecutor } = await freshOpen();
    const { ReferenceExecutor } = await import("../../src/executor/reference.ts");
    const seen: [number, number][] = [];
    const ex = await openExecutor(dir, { device: "cpu", onLoadBytes: (d, t) => seen.push([d, t]) });
    expect(ex).toBeInstanceOf(ReferenceExecutor);
    const size = fs.statSync(path.join(dir, "rank0.engine")).size;
    expect(seen.at(-1)).toEqual([size, size]);
    // verify false reaches the reference loader: the corrupt engine loads
    expect(await openExecutor(corrupt, { device: "cpu", verify: false })).toBeInstanceOf(ReferenceExecutor);
    await expect(openExecutor(corrupt, { device: "cpu" })).rejects.toThrow(/content hash/);
    expect(calls).toEqual([]);
  });

  it("auto without the addon: the reference executor, with verify and the progress", async () => {
    process.env[ADDON_ENV] = path.join(tmpDir(), "missing.node");
    const { openExecutor } = await freshOpen();
    const { ReferenceExecutor } = await import("../../src/executor/reference.ts");
    const seen: number[] = [];
    const ex = await openExecutor(dir, { device: "auto", onLoadBytes: (d) => seen.push(d) });
    expect(ex).toBeInstanceOf(ReferenceExecutor);
    expect(seen.at(-1)).toBe(fs.statSync(path.join(dir, "rank0.engine")).size);
    expect(await openExecutor(corrupt, { device: "auto", verify: false })).toBeInstanceOf(ReferenceExecutor);
    await expect(openExecutor(corrupt, { device: "auto" })).rejects.toThrow(/content hash/);
  });

  it("the native module failing to import: auto falls back to the reference executor, cuda is refused", async () => {
    install();
    vi.doMock("../../src/native/executor.ts", () => {
      throw new Error("native module broken\nsecond line");
    });
    try {
      const { openExecutor } = await freshOpen();
      const { ReferenceExecutor } = await import("../../src/executor/reference.ts");
      expect(await openExecutor(dir, { device: "auto" })).toBeInstanceOf(ReferenceExecutor);
      const err = await openExecutor(dir, { device: "cuda" }).then(
        () => null,
        (e: unknown) => e as Error,
      );
      // (vitest wraps the factory's error in its own one-line message: that first line is what is kept)
      expect(err?.message).toMatch(/^--device cuda: \S/);
      expect(err?.message).not.toContain("\n");
      expect(calls).toEqual([]);
    } finally {
      vi.doUnmock("../../src/native/executor.ts");
    }
  });

  it("--device cuda with an addon of another ABI: refused in one line naming the flag", async () => {
    const file = installAddon(fakeAddon({ abiVersion: () => ABI_VERSION - 1 }).addon);
    const { openExecutor } = await freshOpen();
    await expect(openExecutor(dir, { device: "cuda" })).rejects.toThrow(
      new Error(
        `--device cuda: ${file}: ABI version ${ABI_VERSION - 1}, this tsllm expects ${ABI_VERSION}; run npm run build:native`,
      ),
    );
  });

  it("an addon that sees no CUDA device: auto takes the reference executor, cuda is refused in one line", async () => {
    const { addon, calls } = fakeAddon({ deviceCount: () => 0 });
    installAddon(addon);
    const { openExecutor } = await freshOpen();
    const { ReferenceExecutor } = await import("../../src/executor/reference.ts");
    expect(await openExecutor(dir, { device: "auto" })).toBeInstanceOf(ReferenceExecutor);
    await expect(openExecutor(dir, { device: "cuda" })).rejects.toThrow(
      new Error("--device cuda: no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)"),
    );
    expect(calls).toEqual([]);
  });
});
