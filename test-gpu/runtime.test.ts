// The native runtime's own behaviour: sampling determinism, generate() vs step(), CUDA graphs vs eager,
// rewinding, limits and load errors, random weights against the CPU reference executor.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden, readGolden } from "../src/golden.ts";
import {
  CudaEngine,
  type CudaLoadOptions,
  cudaDeviceCount,
  cudaUnavailable,
  type NodeStats,
} from "../src/native/binding.ts";
import { CudaExecutor } from "../src/native/executor.ts";
import { CORRUPT_CASES, writeCorruptRanks } from "../test/native-loader-cases.ts";
import { goldenFile, maxAbsDiff, REPO, randomEngine, tinyEngine } from "./helpers.ts";

const open: CudaEngine[] = [];
function load(dir: string, o: CudaLoadOptions = {}): CudaEngine {
  const e = CudaEngine.load(dir, o);
  open.push(e);
  return e;
}
afterAll(() => {
  for (const e of open) e.close();
});

const golden = readGolden(goldenFile("llama"));
const prompts = golden.prompts.map((p) => p.inputIds.slice(0, p.promptLen));

describe("which device --device auto takes", () => {
  it("the addon sees this GPU; with CUDA_VISIBLE_DEVICES hiding it, auto runs the CPU reference and cuda is refused", async () => {
    expect(cudaDeviceCount()).toBeGreaterThanOrEqual(1);
    expect(cudaUnavailable()).toBeUndefined();
    const dir = await tinyEngine("llama", "fp16");
    const run = (device: string) =>
      spawnSync(
        process.execPath,
        [
          path.join(REPO, "bin/tsllm-run.mjs"),
          dir,
          "--device",
          device,
          "--input-ids",
          "1,2,3",
          "--max-new-tokens",
          "2",
        ],
        { encoding: "utf8", env: { ...process.env, CUDA_VISIBLE_DEVICES: "" } },
      );
    const auto = run("auto");
    console.log(
      `CUDA_VISIBLE_DEVICES="" tsllm-run --device auto: exit ${auto.status}, stderr ${auto.stderr.trim()}`,
    );
    expect(auto.status).toBe(0);
    expect(auto.stdout.trim()).toMatch(/^\d+(,\d+)?$/); // 1 or 2 ids (stops at an end id)
    const cuda = run("cuda");
    expect(cuda.status).not.toBe(0);
    expect(cuda.stderr.trim()).toContain("--device cuda: no CUDA device is visible to this process");
  });
});

describe("native runtime (tiny-llama fp16)", () => {
  it("reports its GPU, limits and memory", async () => {
    const e = load(await tinyEngine("llama", "fp16"));
    const i = e.info();
    console.log("info", JSON.stringify(i));
    expect(i.gpuSm).toBeGreaterThanOrEqual(80);
    expect(i.engineSm).toBe(80);
    expect(i.vocabSize).toBe(512);
    expect(i.maxBatchSize).toBe(8);
    expect(i.kvBlocksTotal).toBeGreaterThanOrEqual(8 * 8 + 1);
    expect(i.weightBytes).toBeGreaterThan(0);
  });

  it("the same seed repeats exactly; another seed differs (generate)", async () => {
    const e = load(await tinyEngine("llama", "fp16"));
    const sp = { temperature: 0.9, topK: 40, topP: 0.95, seed: 7 };
    const a = e.generate(prompts, 16, sp);
    const b = e.generate(prompts, 16, sp);
    const c = e.generate(prompts, 16, { ...sp, seed: 8 });
    a.tokens.forEach((t, i) => expect(Array.from(b.tokens[i])).toEqual(Array.from(t)));
    expect(a.tokens.map((t) => Array.from(t).join()).join("|")).not.toEqual(
      c.tokens.map((t) => Array.from(t).join()).join("|"),
    );
    expect(e.info().numSequences).toBe(0);
  });

  it("generate() greedy equals step-by-step greedy through step()", async () => {
    const e = load(await tinyEngine("llama", "fp16"));
    const gen = e.generate(prompts, 12);
    prompts.forEach((p, i) => {
      const id = 50 + i;
      const toks: number[] = [];
      let r = e.step([{ id, tokens: p, startPos: 0 }], { tokens: true });
      toks.push(r.tokens![0]);
      for (let k = 1; k < 12; k++) {
        r = e.step([{ id, tokens: [toks[k - 1]], startPos: p.length + k - 1 }], { tokens: true });
        toks.push(r.tokens![0]);
      }
      e.release(id);
      expect(toks).toEqual(Array.from(gen.tokens[i]));
    });
    console.log(
      "greedy",
      gen.tokens.map((t) => Array.from(t).join(",")),
      `ttft ${gen.ttftMs.toFixed(3)} ms, decode ${gen.decodeMs.toFixed(3)} ms`,
    );
  });

  it("sampled steps with a seed repeat exactly (step)", async () => {
    const e = load(await tinyEngine("llama", "fp16"));
    const run = (id: number) => {
      const out: number[] = [];
      let r = e.step(
        [{ id, tokens: prompts[2], startPos: 0, temperature: 1, topK: 0, topP: 0.9, seed: 99 }],
        { tokens: true },
      );
      out.push(r.tokens![0]);
      for (let k = 1; k < 10; k++) {
        r = e.step(
          [
            {
              id,
              tokens: [out[k - 1]],
              startPos: prompts[2].length + k - 1,
              temperature: 1,
              topP: 0.9,
              seed: 99,
            },
          ],
          { tokens: true },
        );
        out.push(r.tokens![0]);
      }
      e.release(id);
      return out;
    };
    expect(run(1)).toEqual(run(2));
  });

  it("decode through CUDA graphs (padded batches) matches eager decode (≤ 0.01)", async () => {
    const dir = await tinyEngine("llama", "fp16");
    const withGraphs = load(dir);
    const eager = load(dir, { cudaGraphs: false });
    let max = 0;
    for (const e of [withGraphs, eager]) e.step(prompts.map((p, i) => ({ id: i, tokens: p, startPos: 0 })));
    for (let k = 0; k < 6; k++) {
      const seqs = prompts.map((p, i) => ({
        id: i,
        tokens: [golden.prompts[i].inputIds[p.length + k]],
        startPos: p.length + k,
      }));
      const a = withGraphs.step(seqs); // 3 sequences: padded to the batch-4 graph
      const b = eager.step(seqs);
      max = Math.max(max, maxAbsDiff(a.logits!, b.logits!));
    }
    console.log(`graphs vs eager: ${max}, graphs captured ${withGraphs.info().numCudaGraphs}`);
    expect(withGraphs.info().numCudaGraphs).toBeGreaterThan(0);
    expect(eager.info().numCudaGraphs).toBe(0);
    expect(max).toBeLessThanOrEqual(0.01);
  });

  it("rewinding a sequence (startPos below its length) recomputes the same logits (≤ 0.01)", async () => {
    const e = load(await tinyEngine("llama", "fp16"));
    const p = golden.prompts[2].inputIds;
    const full = e.step([{ id: 9, tokens: p, startPos: 0, allLogits: true }]);
    const k = 7;
    const again = e.step([{ id: 9, tokens: p.slice(k), startPos: k, allLogits: true }]);
    e.release(9);
    const V = full.vocab;
    expect(again.rows).toBe(p.length - k);
    expect(maxAbsDiff(full.logits!.subarray(k * V), again.logits!)).toBeLessThanOrEqual(0.01);
    expect(() => e.step([{ id: 10, tokens: [1, 2], startPos: 3 }])).toThrow(
      /cached tokens, a step cannot start at position 3/,
    );
  });

  it("runtime limits above the build's re-plan the arena: 16 sequences of 20 tokens in one step equal two steps of 8", async () => {
    const dir = await tinyEngine("llama", "fp16"); // built for batch 8, 256 tokens
    const big = load(dir, { maxBatchSize: 16, maxNumTokens: 512 });
    expect(big.info().maxBatchSize).toBe(16);
    expect(big.info().maxNumTokens).toBe(512);
    const seqs = Array.from({ length: 16 }, (_, i) => ({
      id: i,
      tokens: Array.from({ length: 20 }, (_, k) => (i * 31 + k * 7) % 500),
      startPos: 0,
    }));
    const one = big.step(seqs);
    const ref = load(dir);
    const a = ref.step(seqs.slice(0, 8));
    for (let i = 0; i < 8; i++) ref.release(i);
    const b = ref.step(seqs.slice(8));
    const two = new Float32Array([...a.logits!, ...b.logits!]);
    expect(maxAbsDiff(one.logits!, two)).toBeLessThan(0.01);
  });

  it("max_logits_rows sizes the logits: no larger arena, and a step asking more rows is refused", async () => {
    const dir = await tinyEngine("llama", "fp16");
    const full = load(dir).info().arenaBytes;
    const small = load(dir, { maxLogitsRows: 8 });
    expect(small.info().arenaBytes).toBeLessThanOrEqual(full); // tiny vocab: the MLP, not the logits, sets the peak
    expect(() => small.step([{ id: 0, tokens: new Array(9).fill(1), startPos: 0, allLogits: true }])).toThrow(
      /asks for 9 logits rows, max_logits_rows is 8/,
    );
    expect(small.step([{ id: 1, tokens: new Array(9).fill(1), startPos: 0 }]).rows).toBe(1);
  });

  it("refuses a KV pool that cannot hold one sequence, and steps over the runtime limits", async () => {
    const dir = await tinyEngine("llama", "fp16");
    expect(() => load(dir, { kvCacheMaxBlocks: 3 })).toThrow(/KV cache too small/);
    const small = load(dir, { maxBatchSize: 2, maxSeqLen: 128, maxNumTokens: 64 });
    expect(small.info().maxSeqLen).toBe(128);
    expect(() => small.step([0, 1, 2].map((i) => ({ id: i, tokens: [1], startPos: 0 })))).toThrow(
      /max_batch_size is 2/,
    );
    expect(() => small.step([{ id: 0, tokens: new Array(65).fill(1), startPos: 0 }])).toThrow(
      /max_num_tokens is 64/,
    );
  });

  it("reports a full KV cache as an error and recovers after release", async () => {
    const e = load(await tinyEngine("llama", "fp16"), { kvCacheMaxBlocks: 10 }); // 9 usable blocks of 32
    const seqs = [0, 1, 2, 3, 4].map((i) => ({ id: i, tokens: new Array(40).fill(3), startPos: 0 }));
    expect(() => e.step(seqs)).toThrow(/KV cache full/);
    e.step(seqs.slice(0, 4));
    for (let i = 0; i < 4; i++) e.release(i);
    expect(e.info().kvBlocksFree).toBe(9);
  });

  it("an engine built for a newer SM than the GPU is refused, naming both", async () => {
    const gpuSm = load(await tinyEngine("llama", "fp16")).info().gpuSm;
    if (gpuSm >= 120) return;
    const dir = await tinyEngine("llama", "fp16", { sm: 120 });
    expect(() => load(dir)).toThrow(new RegExp(`built for sm 120, but GPU 0 \\(.*\\) is sm ${gpuSm}`));
  });

  it("random weights generated on the GPU match the reference executor's (≤ 0.05)", async () => {
    const out = await randomEngine("llama");
    const cuda = new CudaExecutor(load(out));
    const ref = ReferenceExecutor.load(out);
    const a = cuda.step([{ seqId: 1, tokens: prompts[2], logits: "all" }]).get(1)!;
    const b = ref.step([{ seqId: 1, tokens: prompts[2], logits: "all" }]).get(1)!;
    const max = Math.max(...a.map((row, i) => maxAbsDiff(row, b[i])));
    console.log(`random weights, CUDA vs reference: ${max}`);
    expect(max).toBeLessThanOrEqual(0.05);
  });
});

// Teacher-forced decode logits of the golden prompts, one sequence at a time (M = 1) and packed (graph batch 4:
// M = 4; eager: M = 3), and the runtime's per-node kernel counters after them.
function decodeRows(
  dir: string,
  o: CudaLoadOptions,
  g = golden,
): { rows: Float32Array[]; stats: NodeStats[] } {
  const e = load(dir, o);
  const rows: Float32Array[] = [];
  g.prompts.forEach((p, i) => {
    e.step([{ id: i, tokens: p.inputIds.slice(0, p.promptLen), startPos: 0 }]);
    for (let pos = p.promptLen; pos < p.inputIds.length; pos++)
      rows.push(e.step([{ id: i, tokens: [p.inputIds[pos]], startPos: pos }]).logits!);
    e.release(i);
  });
  const minNew = Math.min(...g.prompts.map((p) => p.inputIds.length - p.promptLen));
  e.step(g.prompts.map((p, i) => ({ id: 10 + i, tokens: p.inputIds.slice(0, p.promptLen), startPos: 0 })));
  for (let k = 0; k < minNew; k++)
    rows.push(
      e.step(
        g.prompts.map((p, i) => ({
          id: 10 + i,
          tokens: [p.inputIds[p.promptLen + k]],
          startPos: p.promptLen + k,
        })),
      ).logits!,
    );
  const stats = e.nodeStats();
  e.close();
  return { rows, stats };
}
const total = (st: NodeStats[], k: "own" | "folded" | "cublaslt" | "gemv" | "gemvRms" | "gemvGated") =>
  st.reduce((a, s) => a + s[k], 0);
const gemvAny = (s: NodeStats) => s.gemv + s.gemvRms + s.gemvGated;

describe("small-M gemv kernel", () => {
  // Decode linears (M <= 4) can run on the runtime's own gemv kernel when the tuner finds it faster than cuBLASLt
  // (10 variants); force each variant (strict: a decode linear that would fall back to cuBLASLt is an error) and
  // compare teacher-forced decode logits with cuBLASLt's. Same fp32 math in another order: ≤ 0.01. The kernel
  // counters prove which path each run took: every linear ran the gemv (at decode) in the forced runs, none did
  // in the cuBLASLt run.
  for (const [which, dtype] of [
    ["llama", "fp16"],
    ["gptj", "bf16"],
  ] as const) {
    it(`tiny-${which} ${dtype}: every gemv variant agrees with cuBLASLt (≤ 0.01), and ran`, async () => {
      const dir = await tinyEngine(which, dtype);
      const g = readGolden(goldenFile(which));
      for (const cudaGraphs of [true, false]) {
        const ref = decodeRows(dir, { cudaGraphs, gemv: "never" }, g);
        expect(ref.stats.map(gemvAny)).toEqual(ref.stats.map(() => 0));
        expect(total(ref.stats, "cublaslt")).toBeGreaterThan(0);
        for (let v = 0; v < 10; v++) {
          const got = decodeRows(dir, { cudaGraphs, gemv: "always", gemvVariant: v, strictKernels: true }, g);
          const max = Math.max(...got.rows.map((r, i) => maxAbsDiff(r, ref.rows[i])));
          console.log(`tiny-${which} ${dtype} gemv variant ${v} (graphs ${cudaGraphs}) vs cuBLASLt: ${max}`);
          expect(max).toBeLessThanOrEqual(0.01);
          // Every linear without a GELU epilogue (gptj's fc_in keeps cuBLASLt's) ran the gemv at decode.
          const linears = got.stats.filter(
            (st) => st.op === "linear" && (which === "llama" || !/fc_in/.test(st.name)),
          );
          expect(linears.length).toBeGreaterThan(0);
          for (const st of linears)
            expect({ name: st.name, gemv: gemvAny(st) > 0 }).toEqual({ name: st.name, gemv: true });
        }
      }
    });
  }
});

describe("gemv prologue fusion (gemvPrologue)", () => {
  // With the prologue fusion on, the first qkv runs the gemv with its rms_norm folded into the vector read, the
  // gate_up linear runs gemv_glu with the gated_act after it in its epilogue, o_proj and down run gemv_norm (the
  // rms_norm of their output in their last block), and those rms_norm / gated_act launches disappear. Same gemv
  // variant with and without the fusion: the fused vector is rounded exactly as the skipped kernel writes it
  // (rms_norm's fp32 sum of squares in another order: rarely 1 ulp), so the logits agree to 2e-3; with the
  // tuner's own choices the goldens still hold (≤ 0.05). Strict: a planned pair that does not fuse at decode is
  // an error; the counters show the fused kernels ran and the folded nodes launched nothing at decode.
  for (const dtype of ["fp16", "bf16"] as const) {
    it(`tiny-llama ${dtype}: fused equals unfused for the same gemv variant (≤ 2e-3), and the fused kernels ran`, async () => {
      const dir = await tinyEngine("llama", dtype);
      for (const cudaGraphs of [true, false]) {
        for (const v of [0, 5, 9]) {
          const o = { cudaGraphs, gemv: "always", gemvVariant: v, strictKernels: true } as const;
          const ref = decodeRows(dir, { ...o, gemvPrologue: false });
          const got = decodeRows(dir, { ...o, gemvPrologue: true });
          const max = Math.max(...got.rows.map((r, i) => maxAbsDiff(r, ref.rows[i])));
          console.log(
            `tiny-llama ${dtype} gemv variant ${v} (graphs ${cudaGraphs}) fused vs unfused: ${max}`,
          );
          expect(max).toBeLessThanOrEqual(2e-3);
          expect([
            total(ref.stats, "folded"),
            total(ref.stats, "gemvRms"),
            total(ref.stats, "gemvGated"),
          ]).toEqual([0, 0, 0]);
          expect(total(ref.stats, "gemv")).toBeGreaterThan(0);
          const planned = got.stats.filter((st) => st.foldedInto >= 0);
          // per layer: gated_act -> gate_up (its epilogue, gemv_glu), post_attention_layernorm -> o_proj and the next
          // input_layernorm -> down (their last blocks, gemv_norm), the first input_layernorm -> qkv (prologue)
          expect(planned.length).toBeGreaterThanOrEqual(3);
          for (const st of planned) {
            expect({ node: st.name, folded: st.folded > 0 }).toEqual({ node: st.name, folded: true });
            const into = got.stats[st.foldedInto];
            expect(st.op === "rms_norm" ? into.gemvRms : into.gemvGated).toBeGreaterThan(0);
          }
          expect(total(got.stats, "gemvRms")).toBeGreaterThan(0);
          expect(total(got.stats, "gemvGated")).toBeGreaterThan(0);
        }
      }
    });

    it(`tiny-llama ${dtype}: tuned fusion matches the goldens (≤ 0.05), one by one and packed`, async () => {
      const dir = await tinyEngine("llama", dtype);
      const g = readGolden(goldenFile("llama"));
      for (const graphs of [true, false]) {
        const ex = new CudaExecutor(load(dir, { cudaGraphs: graphs, gemvPrologue: true }));
        const one = checkGolden(ex, g);
        const packed = checkGolden(ex, g, { batched: true, seqBase: 3000 });
        console.log(
          `tiny-llama ${dtype} fused (graphs ${graphs}) vs goldens: one-by-one ${one.maxAbs.toFixed(4)}, packed ${packed.maxAbs.toFixed(4)}`,
        );
        expect(one.maxAbs).toBeLessThanOrEqual(0.05);
        expect(packed.maxAbs).toBeLessThanOrEqual(0.05);
      }
    });
  }
});

describe("native loader integrity (tampered rank files, content hash not checked)", () => {
  // The same corrupted rank files as test/native-loader.test.ts (truncated, offsets past the end, bad op
  // attributes, ...), now through tsllm_load on the GPU: each is refused with its one-line error before any
  // weight is uploaded or kernel launched, never an out-of-bounds read.
  it(`refuses ${CORRUPT_CASES.length} kinds of corrupted rank file, each with its own error`, async () => {
    const dir = await tinyEngine("llama", "fp16");
    const cases = writeCorruptRanks(
      path.join(dir, "rank0.engine"),
      fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-corrupt-")),
    );
    for (const [c, file] of cases) {
      let msg = "";
      try {
        CudaEngine.load(file).close();
      } catch (e) {
        msg = (e as Error).message;
      }
      console.log(`${c.name}: ${msg}`);
      expect({ case: c.name, msg }).toEqual({ case: c.name, msg: expect.stringMatching(c.error) });
      expect(msg).toContain(file);
      expect(msg).not.toContain("\n");
    }
    // The valid file still loads after all that.
    load(dir).close();
  });

  it("tsllm-run --no-verify on an engine with a bad op attribute: the native loader's one line, non-zero exit", async () => {
    const src = await tinyEngine("llama", "fp16");
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-tampered-"));
    for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
    const [[c, bad]] = writeCorruptRanks(path.join(src, "rank0.engine"), path.join(dir, "cases")).filter(
      // (the TypeScript reader already refuses out-of-file weights itself; op attributes only the runtime reads)
      ([k]) => k.name === "attention layer outside the KV cache",
    );
    fs.copyFileSync(bad, path.join(dir, "rank0.engine"));
    // The tamperer also fixes config.json's recorded size (the hash is what --no-verify skips).
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    cfg.ranks[0].bytes = fs.statSync(bad).size;
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));
    const r = spawnSync(
      process.execPath,
      [path.join(REPO, "bin/tsllm-run.mjs"), dir, "--device", "cuda", "--no-verify", "--input-ids", "1,2,3"],
      { encoding: "utf8" },
    );
    console.log(`tsllm-run --no-verify on a tampered engine: exit ${r.status}, stderr ${r.stderr.trim()}`);
    expect(r.status).not.toBe(0);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(c.error);
  });
});
