// The native binding's TypeScript side without CUDA (src/native/binding.ts): where the addon is looked for, the
// "not built", "cannot load" and ABI refusals, the addon kept once loaded, describeLoadPhases' line worked out by
// hand, and what CudaEngine does around the addon's calls (the engine file or folder, the load's figures, hashed
// chunks, Int32Array tokens, generate's flattening and split, a closed engine). The addon is a stand-in: a
// CommonJS file at $TSLLM_NATIVE_ADDON that exports an object of recording functions (globalThis.__tsllmFakeAddon);
// the module is imported afresh per test, as its loaded addon is module state. The real addon: test-gpu/.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type * as Binding from "../../src/native/binding.ts";
import { ABI_VERSION } from "../../src/native/binding.ts";
import { REPO, tmpDir } from "../fixtures.ts";
import { ADDON_ENV as ENV, fakeAddon, HANDLE, installAddon, useFakeAddonEnv } from "./fake-addon.ts";

type BindingModule = typeof Binding;

useFakeAddonEnv();

const fresh = (): Promise<BindingModule> => import("../../src/native/binding.ts");

/** An engine file of `bytes` bytes in a folder of its own. */
function engineFile(bytes = 100, name = "rank0.engine") {
  const file = path.join(tmpDir("tsllm-fake-engine-"), name);
  fs.writeFileSync(file, Buffer.alloc(bytes));
  return file;
}

describe("finding and loading the addon", () => {
  it("addonPath: $TSLLM_NATIVE_ADDON, else native/build/tsllm_node.node of this checkout", async () => {
    const b = await fresh();
    expect(b.addonPath()).toBe(path.join(REPO, "native", "build", "tsllm_node.node"));
    process.env[ENV] = "/opt/tsllm/addon.node";
    expect(b.addonPath()).toBe("/opt/tsllm/addon.node");
  });

  it("no addon file: the not-built error, and nativeAvailable is false", async () => {
    process.env[ENV] = path.join(tmpDir(), "missing.node");
    const b = await fresh();
    expect(() => b.loadAddon()).toThrow(new Error(b.NATIVE_NOT_BUILT));
    expect(b.NATIVE_NOT_BUILT).toBe(
      "native runtime not built: run npm run build:native on a machine with CUDA 13 (nvcc, cuBLASLt)",
    );
    expect(b.nativeAvailable()).toBe(false);
    expect(() => b.measureCopyBandwidth()).toThrow(new Error(b.NATIVE_NOT_BUILT));
  });

  it("an addon that fails to load: its path and the first line of why", async () => {
    const file = installAddon({}, 'throw new Error("invalid ELF header\\nat dlopen");\n');
    const b = await fresh();
    expect(() => b.loadAddon()).toThrow(
      new Error(`${file}: cannot load the native runtime: invalid ELF header`),
    );
    expect(b.nativeAvailable()).toBe(false);
  });

  it("an addon of another ABI version is refused, naming both versions", async () => {
    const file = installAddon(fakeAddon({ abiVersion: () => ABI_VERSION - 1 }).addon);
    const b = await fresh();
    expect(() => b.loadAddon()).toThrow(
      new Error(
        `${file}: ABI version ${ABI_VERSION - 1}, this tsllm expects ${ABI_VERSION}; run npm run build:native`,
      ),
    );
    expect(b.nativeAvailable()).toBe(false);
  });

  it("the addon is loaded once and kept; a failed attempt is not", async () => {
    process.env[ENV] = path.join(tmpDir(), "missing.node");
    const b = await fresh();
    expect(b.nativeAvailable()).toBe(false);
    const { addon } = fakeAddon();
    const file = installAddon(addon);
    expect(b.loadAddon()).toBe(addon);
    expect(b.nativeAvailable()).toBe(true);
    // gone from disk, or $TSLLM_NATIVE_ADDON elsewhere: the loaded addon stays
    fs.rmSync(file);
    process.env[ENV] = path.join(tmpDir(), "missing.node");
    expect(b.loadAddon()).toBe(addon);
    expect(b.nativeAvailable()).toBe(true);
  });

  it("measureCopyBandwidth: the addon's figure, 1 GiB by default", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    expect(b.measureCopyBandwidth()).toBe(1.25e12);
    expect(b.measureCopyBandwidth(4096)).toBe(1.25e12);
    expect(calls).toEqual([
      ["copyBandwidth", 2 ** 30],
      ["copyBandwidth", 4096],
    ]);
  });
});

describe("describeLoadPhases", () => {
  const phases: Binding.LoadPhases = {
    totalS: 9.876,
    cudaInitS: 0.254,
    headerS: 0.011,
    weightsS: 1.5,
    restS: 0.333,
    passS: 2,
    readThreadS: 7.125,
    hashThreadS: 3.25,
    waitThreadS: 0.5,
    directBytes: 3 * 2 ** 30,
    cachedBytes: 2 ** 29,
    threads: 8,
    direct: 1,
  };

  it("one line: the phases, the pass's rate (GB/s of both reads), GiB per path, thread seconds", async () => {
    const b = await fresh();
    // (3.5 × 2^30 B) / 1e9 / 2 s = 1.879 GB/s
    expect(b.describeLoadPhases(phases)).toBe(
      "load phases: CUDA init 0.25 s, header 0.01 s, weights waited 1.50 s (pass 2.00 s, 1.88 GB/s, 8 threads, " +
        "3.00 GiB O_DIRECT + 0.50 GiB page cache; thread-s read 7.13, hash 3.25, buffer wait 0.50), " +
        "rest 0.33 s, total 9.88 s",
    );
  });

  it("O_DIRECT off or refused says so; a pass of 0 s reads at 0 GB/s, not NaN", async () => {
    const b = await fresh();
    expect(
      b.describeLoadPhases({ ...phases, direct: 0, directBytes: 0, cachedBytes: 0, passS: 0, threads: 1 }),
    ).toBe(
      "load phases: CUDA init 0.25 s, header 0.01 s, weights waited 1.50 s (pass 0.00 s, 0.00 GB/s, 1 threads, " +
        "0.00 GiB O_DIRECT (off or refused) + 0.00 GiB page cache; thread-s read 7.13, hash 3.25, buffer wait 0.50), " +
        "rest 0.33 s, total 9.88 s",
    );
  });
});

describe("CudaEngine around a stand-in addon", () => {
  it("load: the rank file, the options, the file's size, the load's time and phases", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    const file = engineFile(100, "rank1.engine");
    const t0 = performance.now();
    const e = b.CudaEngine.load(file, { device: 1, cudaGraphs: false });
    const wallS = (performance.now() - t0) / 1000;
    expect(e.file).toBe(file);
    expect(e.vocabSize).toBe(512);
    expect(calls.slice(0, 3)).toEqual([
      ["load", file, { device: 1, cudaGraphs: false }],
      ["loadStats", HANDLE],
      ["info", HANDLE],
    ]);
    expect(e.loadStats.fileBytes).toBe(100);
    expect(e.loadStats.phases).toEqual({ totalS: 1 });
    expect(e.loadStats.chunkDigests).toBeUndefined();
    expect(e.loadStats.seconds).toBeGreaterThanOrEqual(0);
    expect(e.loadStats.seconds).toBeLessThanOrEqual(wallS);
  });

  it("an engine folder loads its rank0.engine; no loadStats in the addon, no phases (hashed or not)", async () => {
    const { addon, calls } = fakeAddon({ loadStats: undefined });
    installAddon(addon);
    const b = await fresh();
    const file = engineFile(64);
    const e = b.CudaEngine.load(path.dirname(file));
    expect(e.file).toBe(file);
    expect(calls[0]).toEqual(["load", file, {}]);
    expect(e.loadStats.fileBytes).toBe(64);
    expect(e.loadStats.phases).toBeUndefined();
    const hashed = b.CudaEngine.load(file, { hashChunkBytes: 64 });
    expect(hashed.loadStats.chunkDigests).toHaveLength(1);
    expect(hashed.loadStats.phases).toBeUndefined();
    expect(() => b.CudaEngine.load(path.join(path.dirname(file), "rank7.engine"))).toThrow(/ENOENT/);
  });

  it("hashChunkBytes: loadHashed with the chunk count, the digests cut into 32-byte chunks", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    const file = engineFile(100);
    const t0 = performance.now();
    const e = b.CudaEngine.load(file, { hashChunkBytes: 32 });
    const wallS = (performance.now() - t0) / 1000;
    expect(calls[0]).toEqual(["loadHashed", file, { hashChunkBytes: 32 }, 32, 4]); // ceil(100 / 32)
    expect(calls.some((c) => c[0] === "load")).toBe(false);
    const d = e.loadStats.chunkDigests!;
    expect(d.map((x) => [...x])).toEqual(
      [0, 1, 2, 3].map((i) => Array.from({ length: 32 }, (_, j) => 32 * i + j)),
    );
    expect(e.loadStats.fileBytes).toBe(100);
    expect(e.loadStats.phases).toEqual({ totalS: 1 });
    expect(e.loadStats.seconds).toBeGreaterThanOrEqual(0);
    expect(e.loadStats.seconds).toBeLessThanOrEqual(wallS);
    expect(e.vocabSize).toBe(512);
  });

  it("hashChunkBytes on an addon built before loadHashed is refused, naming the addon", async () => {
    const { addon, calls } = fakeAddon({ loadHashed: undefined });
    const addonFile = installAddon(addon);
    const b = await fresh();
    expect(() => b.CudaEngine.load(engineFile(), { hashChunkBytes: 32 })).toThrow(
      new Error(`${addonFile}: built before the verified load (no loadHashed); run npm run build:native`),
    );
    expect(calls).toEqual([]);
  });

  it("step, stepLaunch, stepWait: tokens as Int32Array (null kept), the rest of each sequence as given", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    const e = b.CudaEngine.load(engineFile());
    calls.length = 0;
    const own = Int32Array.of(9, 8);
    expect(e.step([{ id: 1, tokens: [5, 6, 7], startPos: 2, temperature: 0.5 }])).toEqual({
      rows: 1,
      vocab: 512,
    });
    e.step([{ id: 2n, tokens: own, startPos: 0, allLogits: true }], { tokens: true });
    expect(calls[0]).toEqual([
      "step",
      HANDLE,
      [{ id: 1, tokens: Int32Array.of(5, 6, 7), startPos: 2, temperature: 0.5 }],
      { logits: true },
    ]);
    expect(calls[1]).toEqual([
      "step",
      HANDLE,
      [{ id: 2n, tokens: own, startPos: 0, allLogits: true }],
      { tokens: true },
    ]);
    expect((calls[1][2] as { tokens: Int32Array }[])[0].tokens).toBe(own);
    expect(
      e.stepLaunch([
        { id: 1, tokens: [4], startPos: 3, seed: 7 },
        { id: 2, tokens: null, startPos: 5 },
      ]),
    ).toBe(7);
    expect(calls[2]).toEqual([
      "stepLaunch",
      HANDLE,
      [
        { id: 1, tokens: Int32Array.of(4), startPos: 3, seed: 7 },
        { id: 2, tokens: null, startPos: 5 },
      ],
    ]);
    expect(await e.stepWait(7, 2)).toEqual({ tokens: Int32Array.of(3), gpuMs: 1, gapMs: 0 });
    expect(calls[3]).toEqual(["stepWait", HANDLE, 7, 2]);
  });

  it("stepLaunch on an addon without it is refused, naming the addon", async () => {
    const { addon } = fakeAddon({ stepLaunch: undefined });
    const addonFile = installAddon(addon);
    const b = await fresh();
    const e = b.CudaEngine.load(engineFile());
    expect(() => e.stepLaunch([{ id: 1, tokens: [1], startPos: 0 }])).toThrow(
      new Error(`${addonFile}: this addon has no stepLaunch; run npm run build:native`),
    );
  });

  it("generate: the prompts flattened with their lengths, the tokens split maxNewTokens per prompt", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    const e = b.CudaEngine.load(engineFile());
    calls.length = 0;
    const sampling = [{ temperature: 1, seed: 3 }, { topK: 1 }];
    const r = e.generate([[1, 2, 3], Int32Array.of(4, 5)], 2, sampling);
    expect(calls).toEqual([
      ["generate", HANDLE, Int32Array.of(1, 2, 3, 4, 5), Int32Array.of(3, 2), 2, sampling],
    ]);
    expect(r).toEqual({
      tokens: [Int32Array.of(10, 11), Int32Array.of(20, 21)],
      ttftMs: 1.5,
      decodeMs: 2,
      totalMs: 3.5,
      wallMs: 4,
      stepMs: Float64Array.of(2),
    });
  });

  it("release, info, nodeStats pass the handle; close unloads once, then every call says the engine is closed", async () => {
    const { addon, calls } = fakeAddon();
    installAddon(addon);
    const b = await fresh();
    const file = engineFile();
    const e = b.CudaEngine.load(file);
    calls.length = 0;
    e.release(5n);
    expect(e.info()).toEqual({ vocabSize: 512, gpuName: "fake" });
    expect(e.nodeStats()).toEqual([{ op: "linear" }]);
    expect(calls).toEqual([
      ["release", HANDLE, 5n],
      ["info", HANDLE],
      ["nodeStats", HANDLE],
    ]);
    calls.length = 0;
    e.close();
    e.close();
    expect(calls).toEqual([["unload", HANDLE]]);
    const closed = new Error(`${file}: engine is closed`);
    expect(() => e.info()).toThrow(closed);
    expect(() => e.step([{ id: 1, tokens: [1], startPos: 0 }])).toThrow(closed);
    expect(() => e.release(1)).toThrow(closed);
    expect(() => e.generate([[1]], 1)).toThrow(closed);
    expect(() => e.nodeStats()).toThrow(closed);
    expect(() => e.stepWait(1, 1)).toThrow(closed);
    expect(calls).toEqual([["unload", HANDLE]]);
  });
});
