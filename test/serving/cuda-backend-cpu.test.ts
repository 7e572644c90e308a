// The batch manager's CUDA backend (src/serving/cuda-backend.ts) without CUDA, over the stand-in addon of
// test/native/fake-addon.ts: the limits and info it states from the engine's (its KV pool: the free blocks, the
// padding rows' scratch block left out), the load phases line when the addon reports phases, what one pipelined step
// hands stepLaunch and stepWait (each sequence's sampling options, null tokens kept) and the -1 of a sequence
// that samples nothing; release, the kernel report and close passed on. The real addon: test-gpu/.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import type { NodeStats } from "../../src/native/binding.ts";
import { tmpDir } from "../fixtures.ts";
import {
  cudaInfo,
  fakeAddon,
  HANDLE,
  installAddon,
  PHASES,
  QKV_STATS,
  useFakeAddonEnv,
} from "../native/fake-addon.ts";

useFakeAddonEnv();

const STATS: NodeStats[] = [
  QKV_STATS,
  {
    op: "attention",
    name: "attn",
    foldedInto: -1,
    own: 7,
    folded: 0,
    cublaslt: 0,
    gemv: 0,
    gemvRms: 0,
    gemvGated: 0,
    fp8Fmha: 3,
    fp8Act: 0,
  },
];

/** A CudaStepBackend over a stand-in engine (a 64-byte rank file); `extra` replaces addon functions. */
async function backend(extra: Record<string, unknown> = {}) {
  const f = fakeAddon({
    info: () => cudaInfo(),
    loadStats: () => PHASES,
    nodeStats: () => STATS,
    ...extra,
  });
  installAddon(f.addon);
  const file = path.join(tmpDir("tsllm-fake-engine-"), "rank0.engine");
  fs.writeFileSync(file, Buffer.alloc(64));
  const { CudaEngine } = await import("../../src/native/binding.ts");
  const { CudaStepBackend } = await import("../../src/serving/cuda-backend.ts");
  const b = new CudaStepBackend(CudaEngine.load(file));
  f.calls.length = 0;
  return { b, calls: f.calls };
}

describe("CudaStepBackend over the stand-in addon", () => {
  it("vocab, limits (the KV pool is the free blocks) and info from the engine's; the load phases line", async () => {
    const { b } = await backend();
    expect(b.vocabSize).toBe(512);
    expect(b.limits).toEqual({
      maxBatchSize: 4,
      maxNumTokens: 48,
      maxSeqLen: 64,
      tokensPerBlock: 8,
      kvBlocksTotal: 100,
    });
    // 1 GiB in a 2 s pass: 0.54 GB/s
    expect(b.info).toEqual({
      device: "cuda",
      deviceName: "Fake GPU 80GB",
      dtype: "fp16",
      kvDtype: "fp8",
      loadPhases:
        "load phases: CUDA init 0.50 s, header 0.01 s, weights waited 1.00 s (pass 2.00 s, 0.54 GB/s, 4 threads, " +
        "1.00 GiB O_DIRECT + 0.00 GiB page cache; thread-s read 3.00, hash 1.50, buffer wait 0.13), rest 0.25 s, " +
        "total 4.00 s",
    });
  });

  it("an addon without load phases: no loadPhases in the info", async () => {
    const { b } = await backend({ loadStats: undefined });
    expect(b.info).toEqual({ device: "cuda", deviceName: "Fake GPU 80GB", dtype: "fp16", kvDtype: "fp8" });
    expect(Object.keys(b.info)).not.toContain("loadPhases");
  });

  it("step: launches the sequences with their sampling, waits with the ticket and count; -1 where not sampled", async () => {
    const { b, calls } = await backend({
      stepLaunch: (h: unknown, seqs: unknown) => {
        calls.push(["stepLaunch", h, seqs]);
        return 41;
      },
      stepWait: (h: unknown, t: number, n: number) => {
        calls.push(["stepWait", h, t, n]);
        return Promise.resolve({ tokens: Int32Array.of(100, 200, 300), gpuMs: 2.5, gapMs: 0.25 });
      },
    });
    const out = await b.step([
      {
        seqId: 3,
        tokens: [1, 2],
        startPos: 0,
        sample: true,
        sampling: { temperature: 0.7, topK: 40, topP: 0.9, seed: 11 },
      },
      {
        seqId: 5,
        tokens: [9, 8, 7],
        startPos: 16,
        sample: false,
        sampling: { temperature: 0, topK: 1, topP: 1, seed: 0 },
      },
      {
        seqId: 6,
        tokens: null,
        startPos: 4,
        sample: true,
        sampling: { temperature: 1.5, topK: 0, topP: 0.5, seed: -2 },
      },
    ]);
    expect(calls).toEqual([
      [
        "stepLaunch",
        HANDLE,
        [
          {
            id: 3,
            tokens: Int32Array.of(1, 2),
            startPos: 0,
            temperature: 0.7,
            topK: 40,
            topP: 0.9,
            seed: 11n,
          },
          {
            id: 5,
            tokens: Int32Array.of(9, 8, 7),
            startPos: 16,
            temperature: 0,
            topK: 1,
            topP: 1,
            seed: 0n,
          },
          {
            id: 6,
            tokens: null,
            startPos: 4,
            temperature: 1.5,
            topK: 0,
            topP: 0.5,
            seed: 2n ** 64n - 2n,
          },
        ],
      ],
      ["stepWait", HANDLE, 41, 3],
    ]);
    expect(out).toEqual({ tokens: Int32Array.of(100, -1, 300), stepMs: 2.5, gapMs: 0.25 });
  });

  it("release, kernelReport and close go to the engine", async () => {
    const { b, calls } = await backend();
    b.release(9);
    const { kernelReport } = await import("../../src/native/kernel-report.ts");
    const report = b.kernelReport();
    expect(report).toEqual(kernelReport(STATS));
    expect(report[0]).toBe(
      "runtime kernels: linear launches cuBLASLt 2, gemv 5, gemv+rms_norm 1, gemv+gated_act 0; attention context " +
        "steps through the FP8 context FMHA 3; norm / gated_act launches writing FP8 rows for the next FP8 GEMM 0; " +
        "other launches 7",
    );
    b.close();
    expect(calls).toEqual([
      ["release", HANDLE, 9],
      ["unload", HANDLE],
    ]);
  });
});

describe("openBatchManager and the stand-in addon's devices", () => {
  it("no CUDA device visible: auto opens the CPU reference backend, cuda is refused in one line", async () => {
    const { buildFixture } = await import("../fixtures.ts");
    const dir = await buildFixture("llama");
    const { addon, calls } = fakeAddon({ deviceCount: () => 0 });
    installAddon(addon);
    const { openBatchManager } = await import("../../src/serving/open.ts");
    const bm = await openBatchManager(dir, { device: "auto" });
    expect(bm.backendInfo.device).toBe("cpu");
    await bm.shutdown();
    await expect(openBatchManager(dir, { device: "cuda" })).rejects.toThrow(
      new Error("--device cuda: no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)"),
    );
    expect(calls).toEqual([]);
    fs.rmSync(path.dirname(dir), { recursive: true, force: true });
  });
});
