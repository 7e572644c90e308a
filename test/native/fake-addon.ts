// A stand-in for the native addon (native/build/tsllm_node.node), for testing the TypeScript around it without CUDA:
// a CommonJS file at $TSLLM_NATIVE_ADDON that exports an object of recording functions (globalThis.__tsllmFakeAddon).
// src/native/binding.ts keeps the addon it loaded as module state, so a test imports the modules over it afresh
// (vi.resetModules) after installAddon. It tests what the TypeScript passes to the addon and does with what comes
// back, not the addon: the real one runs in test-gpu/.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, beforeEach, vi } from "vitest";
import { ABI_VERSION, type CudaInfo, type LoadPhases, type NodeStats } from "../../src/native/binding.ts";
import { tmpDir } from "../fixtures.ts";

export const ADDON_ENV = "TSLLM_NATIVE_ADDON";
const g = globalThis as { __tsllmFakeAddon?: unknown };

/**
 * Registers the hooks every stand-in test file needs: $TSLLM_NATIVE_ADDON cleared and the module registry reset
 * before each test (binding.ts keeps the addon it loaded), the variable restored and the stand-in forgotten after.
 */
export function useFakeAddonEnv(): void {
  let saved: string | undefined;
  beforeEach(() => {
    saved = process.env[ADDON_ENV];
    delete process.env[ADDON_ENV];
    vi.resetModules();
  });
  afterEach(() => {
    if (saved === undefined) delete process.env[ADDON_ENV];
    else process.env[ADDON_ENV] = saved;
    clearFakeAddon();
  });
}

/** A linear's kernel counts as a stand-in's nodeStats returns them (cuBLASLt, plain and rms-prologue gemvs). */
export const QKV_STATS: NodeStats = {
  op: "linear",
  name: "qkv",
  foldedInto: -1,
  own: 0,
  folded: 0,
  cublaslt: 2,
  gemv: 5,
  gemvRms: 1,
  gemvGated: 0,
  fp8Fmha: 0,
  fp8Act: 0,
};

/** A load's phases as a stand-in's loadStats returns them, and describeLoadPhases' line for them (by hand). */
export const PHASES: LoadPhases = {
  totalS: 4,
  cudaInitS: 0.5,
  headerS: 0.01,
  weightsS: 1,
  restS: 0.25,
  passS: 2,
  readThreadS: 3,
  hashThreadS: 1.5,
  waitThreadS: 0.125,
  directBytes: 2 ** 30,
  cachedBytes: 0,
  threads: 4,
  direct: 1,
};
export const PHASES_LINE =
  "load phases: CUDA init 0.50 s, header 0.01 s, weights waited 1.00 s (pass 2.00 s, 0.54 GB/s, 4 threads, " +
  "1.00 GiB O_DIRECT + 0.00 GiB page cache; thread-s read 3.00, hash 1.50, buffer wait 0.13), rest 0.25 s, total 4.00 s";

/** Writes the stand-in addon (a new file each time: require caches by path) and points $TSLLM_NATIVE_ADDON at it. */
export function installAddon(
  addon: Record<string, unknown>,
  source = "module.exports = globalThis.__tsllmFakeAddon;\n",
): string {
  const file = path.join(tmpDir("tsllm-fake-addon-"), "tsllm_node.cjs");
  fs.writeFileSync(file, source);
  g.__tsllmFakeAddon = addon;
  process.env[ADDON_ENV] = file;
  return file;
}

/** Forgets the installed stand-in (the variable is the caller's to restore). */
export function clearFakeAddon(): void {
  delete g.__tsllmFakeAddon;
}

/** The engine handle every stand-in's load returns. */
export const HANDLE = { engine: "h1" };

export type Call = [string, ...unknown[]];

/** A recording addon of the current ABI; `extra` replaces (or, undefined, removes) its functions. */
export function fakeAddon(extra: Record<string, unknown> = {}): {
  addon: Record<string, unknown>;
  calls: Call[];
} {
  const calls: Call[] = [];
  const rec =
    (name: string, ret: (...a: unknown[]) => unknown = () => undefined) =>
    (...a: unknown[]) => {
      calls.push([name, ...a]);
      return ret(...a);
    };
  const addon: Record<string, unknown> = {
    abiVersion: () => ABI_VERSION,
    deviceCount: () => 1,
    load: rec("load", () => HANDLE),
    loadHashed: rec("loadHashed", (_f, _o, _c, n) => ({
      handle: HANDLE,
      digests: Buffer.from(Array.from({ length: 32 * (n as number) }, (_, i) => i)),
    })),
    loadStats: rec("loadStats", () => ({ totalS: 1 })),
    unload: rec("unload"),
    step: rec("step", () => ({ rows: 1, vocab: 512 })),
    stepLaunch: rec("stepLaunch", () => 7),
    stepWait: rec("stepWait", () => Promise.resolve({ tokens: Int32Array.of(3), gpuMs: 1, gapMs: 0 })),
    release: rec("release"),
    generate: rec("generate", () => ({
      tokens: Int32Array.of(10, 11, 20, 21),
      ttftMs: 1.5,
      decodeMs: 2,
      totalMs: 3.5,
      wallMs: 4,
      stepMs: Float64Array.of(2),
    })),
    info: rec("info", () => ({ vocabSize: 512, gpuName: "fake" })),
    nodeStats: rec("nodeStats", () => [{ op: "linear" }]),
    copyBandwidth: rec("copyBandwidth", () => 1.25e12),
    ...extra,
  };
  return { addon, calls };
}

/**
 * What the real addon's loadHashed returns as digests: the SHA-256 of each chunkBytes-long chunk of the file
 * (the last one shorter), concatenated (src/engine/hash.ts's scheme).
 */
export function chunkDigestsOf(file: string, chunkBytes: number): Buffer {
  const bytes = fs.readFileSync(file);
  const out: Buffer[] = [];
  for (let off = 0; off < bytes.length; off += chunkBytes)
    out.push(
      createHash("sha256")
        .update(bytes.subarray(off, off + chunkBytes))
        .digest(),
    );
  return Buffer.concat(out);
}

/** A whole CudaInfo (what the real addon's info returns), every figure distinct; `over` replaces some. */
export function cudaInfo(over: Partial<CudaInfo> = {}): CudaInfo {
  return {
    gpuName: "Fake GPU 80GB",
    gpuSm: 90,
    engineSm: 90,
    tp: 1,
    rank: 0,
    vocabSize: 512,
    maxBatchSize: 4,
    maxSeqLen: 64,
    maxNumTokens: 48,
    tokensPerBlock: 8,
    numLayers: 2,
    numNodes: 31,
    numCudaGraphs: 3,
    kvBlocksTotal: 101,
    kvBlocksFree: 100,
    numSequences: 0,
    weightBytes: 2_013_952,
    arenaBytes: 65_536,
    kvBytes: 1 << 20,
    workspaceBytes: 4096,
    dtype: "fp16",
    kvDtype: "fp8",
    hasNccl: false,
    ...over,
  };
}
