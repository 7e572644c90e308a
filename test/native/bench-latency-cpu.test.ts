// tsllm-bench latency (src/cli/bench.ts) in-process without CUDA, over the stand-in addon of ./fake-addon.ts: the
// module is imported afresh per run with process.argv set (it parses the command line when it loads), stdout and
// stderr captured. The stand-in's generate answers scripted timings, so what the command does with them can be worked
// out by hand: the seeded prompts it generates from, warm-up runs left out, the median run by total time, the median
// decode step, tokens/s, the KV bytes per token by the KV cache's dtype, the roofline against the measured copy
// bandwidth, every printed line and the --json report; and the load options it passes (max_seq_len cut to the run,
// CUDA graphs, the content hash). The real GPU run: test-gpu/. (test/serving/bench-cli.test.ts runs the binary as a
// child process: Stryker's coverage does not reach that, and it has no latency run.)
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { compileEngine } from "../../src/compile.ts";
import { openEngine } from "../../src/engine/reader.ts";
import type { NodeStats } from "../../src/native/binding.ts";
import { kernelReport } from "../../src/native/kernel-report.ts";
import { decodeStepWeightBytes } from "../../src/native/roofline.ts";
import { runCommand } from "../cli-main-helpers.ts";
import { buildFixture, MIXTRAL_MODEL, TINY_MIXTRAL, tmpDir } from "../fixtures.ts";
import {
  chunkDigestsOf,
  cudaInfo,
  fakeAddon,
  HANDLE,
  installAddon,
  PHASES,
  PHASES_LINE,
  QKV_STATS,
  useFakeAddonEnv,
} from "./fake-addon.ts";

let llama: string; // fp32, KV cache fp32
let fp16: string; // KV cache fp16
let fp8: string; // KV cache fp8
let moe: string; // tiny-mixtral, fp16
let work: string;
const folders: string[] = [];

beforeAll(async () => {
  const o = { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 8 };
  llama = await buildFixture("llama", o);
  fp16 = await buildFixture("llama", { ...o, dtype: "fp16" });
  fp8 = await buildFixture("llama", { ...o, dtype: "fp16", kvCacheDtype: "fp8" });
  moe = path.join(tmpDir(), "engine");
  await compileEngine({
    modelFile: MIXTRAL_MODEL,
    checkpoint: TINY_MIXTRAL,
    sm: 90,
    dtype: "fp16",
    out: moe,
    ...o,
  });
  work = tmpDir();
  folders.push(path.dirname(llama), path.dirname(fp16), path.dirname(fp8), path.dirname(moe), work);
});
afterAll(() => {
  for (const f of folders) fs.rmSync(f, { recursive: true, force: true });
});

useFakeAddonEnv();
afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

const STATS: NodeStats[] = [QKV_STATS];

const BW = 2e9; // the stand-in's copy bandwidth, bytes/s

/**
 * The timings of the n-th generate call of a batch (0: the warm-up when there is one): the timed runs' totals are
 * 30, 10, 20 ms, so the median run is the third, whose decode steps are 10, 9, 100, 2 ms (median 10; as text they
 * would sort 10, 100, 2, 9; unsorted the middle one is 100).
 */
function timings(k: number, maxNew: number) {
  const runs = [
    { ttftMs: 1, totalMs: 1, steps: [1] }, // warm-up
    { ttftMs: 7, totalMs: 30, steps: [50] },
    { ttftMs: 8, totalMs: 10, steps: [60] },
    { ttftMs: 4.5, totalMs: 20, steps: [10, 9, 100, 2] },
  ];
  const r = runs[Math.min(k, 3)];
  return {
    ttftMs: r.ttftMs,
    decodeMs: r.totalMs - r.ttftMs,
    totalMs: r.totalMs,
    wallMs: r.totalMs + 1,
    stepMs: Float64Array.from({ length: maxNew - 1 }, (_, i) => r.steps[i % r.steps.length]),
  };
}

/** Installs a stand-in for the bench: real chunk digests, the engine's info, scripted generate timings. */
function install(
  info = cudaInfo({ maxBatchSize: 4, weightBytes: 12_345_678_901 }),
  extra: Record<string, unknown> = {},
) {
  const f = fakeAddon({
    loadHashed: (file: string, o: unknown, chunk: number, n: number) => {
      f.calls.push(["loadHashed", file, o, chunk, n]);
      return { handle: HANDLE, digests: chunkDigestsOf(file, chunk) };
    },
    loadStats: () => PHASES,
    info: () => info,
    nodeStats: () => STATS,
    copyBandwidth: (bytes: number) => {
      f.calls.push(["copyBandwidth", bytes]);
      return BW;
    },
    generate: (_h: unknown, flat: Int32Array, lens: Int32Array, maxNew: number, sampling: unknown) => {
      const B = lens.length;
      const k = f.calls.filter((c) => c[0] === "generate" && (c[3] as Int32Array).length === B).length;
      f.calls.push(["generate", HANDLE, flat, lens, maxNew, sampling]);
      return { ...timings(k, maxNew), tokens: new Int32Array(B * maxNew) };
    },
    ...extra,
  });
  installAddon(f.addon);
  return f.calls;
}

// CudaEngine.load's two clock readings 4 ms apart: the load takes 0.004 s.
function clock() {
  let t = 1000;
  vi.spyOn(performance, "now").mockImplementation(() => (t += 4));
}

/** tsllm-bench ARGS: the module loaded afresh with that command line; stdout, stderr, exit code, commander's exit. */
async function bench(args: string[]) {
  const argv = process.argv;
  process.argv = [process.execPath, "tsllm-bench", ...args];
  try {
    return await runCommand(() => import("../../src/cli/bench.ts"));
  } finally {
    process.argv = argv;
  }
}

/** The seeded prompts of batch B (an LCG seeded 12345 + B, modulo the vocabulary), flattened. */
function prompts(B: number, inputLen: number, vocab = 512): Int32Array {
  let seed = 12345 + B;
  const out = new Int32Array(B * inputLen);
  for (let i = 0; i < out.length; i++) {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    out[i] = seed % vocab;
  }
  return out;
}

/** One batch's figures from the median run (ttft 4.5 ms, total 20 ms, median step 10 ms), worked out. */
function row(dir: string, B: number, inputLen: number, outputLen: number, kvPerToken: number) {
  const w = decodeStepWeightBytes(openEngine(dir).ranks[0].header, B);
  const ctx = inputLen + outputLen / 2;
  const rooflineMs = ((w.bytes + B * ctx * kvPerToken) / BW) * 1000;
  return {
    batch: B,
    ttft_ms: 4.5,
    tpot_ms: 10,
    output_tok_s: (B * outputLen) / 0.02,
    decode_tok_s: B * 100,
    step_weight_bytes: w.bytes,
    roofline_step_ms: rooflineMs,
    roofline_tok_s: (B * 1000) / rooflineMs,
    pct_of_roofline: (100 * rooflineMs) / 10,
  };
}

const batchLine = (r: ReturnType<typeof row>) =>
  `batch ${r.batch}: TTFT 4.50 ms, TPOT 10.000 ms, ${r.output_tok_s.toFixed(1)} output tok/s ` +
  `(decode ${r.decode_tok_s.toFixed(1)} tok/s; roofline ${r.roofline_step_ms.toFixed(3)} ms/step = ` +
  `${r.roofline_tok_s.toFixed(1)} tok/s, ${r.pct_of_roofline.toFixed(1)}% of roofline)\n`;

describe("tsllm-bench latency over the stand-in addon", () => {
  it("two batch sizes: the load, the GPU line, the copy bandwidth, one line per batch; the --json report", async () => {
    const calls = install();
    clock();
    const json = path.join(work, "latency.json");
    const rank = path.join(llama, "rank0.engine");
    const bytes = fs.statSync(rank).size;
    const r = await bench([
      "latency",
      llama,
      "--batch-size",
      "2,1",
      "--input-len",
      "6",
      "--output-len",
      "5",
      "--runs",
      "3",
      "--json",
      json,
    ]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBeUndefined();
    expect(r.exit).toBeUndefined();
    // fp32 KV cache: 2 (K, V) × 2 layers × 2 KV heads × head_dim 32 × 4 bytes = 1024 bytes per token
    const rows = [row(llama, 2, 6, 5, 1024), row(llama, 1, 6, 5, 1024)];
    expect(rows[0].step_weight_bytes).toBeGreaterThan(rows[1].step_weight_bytes); // 2 embedding rows gathered
    const loadGbS = bytes / 1e9 / 0.004;
    expect(r.stdout).toBe(
      `load: ${(bytes / 1e9).toFixed(2)} GB in 0.00 s (${loadGbS.toFixed(2)} GB/s, CUDA setup, upload and KV cache; ` +
        "content hash checked in the same pass)\n" +
        `${PHASES_LINE}\n` +
        "Fake GPU 80GB (sm 90), engine fp32 sm 90, quant none, kv cache fp32, weights 12.35 GB, kv blocks 101\n" +
        "device-to-device copy: 2 GB/s (bytes read + written)\n" +
        rows.map(batchLine).join(""),
    );
    expect(loadGbS.toFixed(2)).toBe("0.50");
    // 2,1 each: one warm-up, three timed runs of the same seeded prompts, 5 new tokens, no sampling options
    const gen = calls.filter((c) => c[0] === "generate");
    expect(gen).toHaveLength(8);
    for (const [i, B] of [2, 2, 2, 2, 1, 1, 1, 1].entries())
      expect(gen[i]).toEqual(["generate", HANDLE, prompts(B, 6), new Int32Array(B).fill(6), 5, undefined]);
    expect(calls.filter((c) => c[0] === "copyBandwidth")).toEqual([["copyBandwidth", 2 ** 30]]);
    // the load: its max_seq_len cut to the run (6 + 5 + 1), CUDA graphs on, the hash checked in the upload
    const chunk = openEngine(llama).config.ranks[0].hash!.chunk_bytes;
    expect(calls[0]).toEqual([
      "loadHashed",
      rank,
      { verify: true, cudaGraphs: true, fp8ContextFmha: "auto", maxSeqLen: 12, hashChunkBytes: chunk },
      chunk,
      1,
    ]);
    expect(calls.at(-1)).toEqual(["unload", HANDLE]);
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    expect(rep).toEqual({
      tsllm_bench: "latency",
      gpu: "Fake GPU 80GB",
      copy_gb_s: 2,
      load_s: 0.004,
      load_gb_s: loadGbS,
      results: rows,
    });
    expect(Object.keys(rep.results[0])).toEqual(Object.keys(rows[0]));
  });

  it("defaults: batch 1, 128 + 128 tokens (max_seq_len the engine's 64), one warm-up, three runs", async () => {
    const calls = install();
    const r = await bench(["latency", llama]);
    expect(r.stderr).toBe("");
    const gen = calls.filter((c) => c[0] === "generate");
    expect(gen).toHaveLength(4);
    for (const g of gen)
      expect(g).toEqual(["generate", HANDLE, prompts(1, 128), Int32Array.of(128), 128, undefined]);
    expect((calls[0][2] as { maxSeqLen: number }).maxSeqLen).toBe(64);
    expect(r.stdout.split("\n").filter((l) => l.startsWith("batch "))).toEqual([
      batchLine(row(llama, 1, 128, 128, 1024)).trimEnd(),
    ]);
  });

  it("no warm-up and one run; --no-cuda-graphs, --fp8-context-fmha; --no-verify loads plainly and says so", async () => {
    const calls = install();
    const r = await bench([
      "latency",
      llama,
      "--input-len",
      "60",
      "--output-len",
      "3",
      "--warmup",
      "0",
      "--runs",
      "1",
      "--no-cuda-graphs",
      "--fp8-context-fmha",
      "on",
      "--no-verify",
    ]);
    expect(r.stderr).toBe("");
    expect(calls[0]).toEqual([
      "load",
      path.join(llama, "rank0.engine"),
      { verify: false, cudaGraphs: false, fp8ContextFmha: "on", maxSeqLen: 64 },
    ]);
    expect(r.stdout.split("\n")[0]).toMatch(/; content hash not checked\)$/);
    // the only run is the median: the stand-in's first timed run (no warm-up), ttft 1 ms, step 1 ms
    const gen = calls.filter((c) => c[0] === "generate");
    expect(gen).toHaveLength(1);
    expect(r.stdout).toContain(
      "batch 1: TTFT 1.00 ms, TPOT 1.000 ms, 3000.0 output tok/s (decode 1000.0 tok/s;",
    );
  });

  it("--output-len 1: no decode step, so TPOT, decode tok/s and % of roofline are n/a (null in --json), no crash", async () => {
    install();
    const json = path.join(work, "one-token.json");
    const r = await bench(["latency", llama, "--input-len", "6", "--output-len", "1", "--json", json]);
    expect(r.stderr).toBe("");
    expect(r.exitCode).toBeUndefined();
    // the median run (total 20 ms, TTFT 4.5 ms) of one token: 1 · 1 / 0.02 s = 50 output tok/s
    expect(r.stdout).toContain(
      "batch 1: TTFT 4.50 ms, TPOT n/a ms, 50.0 output tok/s (decode n/a tok/s; roofline ",
    );
    expect(r.stdout).toMatch(/ tok\/s, n\/a% of roofline\)\n/);
    const [res] = JSON.parse(fs.readFileSync(json, "utf8")).results;
    expect(res).toMatchObject({
      batch: 1,
      ttft_ms: 4.5,
      tpot_ms: null,
      output_tok_s: 50,
      decode_tok_s: null,
    });
    expect(res.pct_of_roofline).toBeNull();
  });

  it("the KV bytes per token follow the KV cache's dtype: fp16 2 bytes, fp8 1", async () => {
    for (const [dir, perToken, kv] of [
      [fp16, 512, "fp16"],
      [fp8, 256, "fp8"],
    ] as const) {
      vi.resetModules();
      install();
      const json = path.join(work, `kv-${kv}.json`);
      const r = await bench(["latency", dir, "--input-len", "6", "--output-len", "5", "--json", json]);
      expect(r.stderr).toBe("");
      expect(r.stdout).toContain(`engine fp16 sm 90, quant none, kv cache ${kv}, `);
      const want = row(dir, 1, 6, 5, perToken);
      expect(JSON.parse(fs.readFileSync(json, "utf8")).results).toEqual([want]);
      expect(r.stdout).toContain(batchLine(want));
    }
  });

  it("a moe engine: the roofline counts the experts a batch is routed to, and says so", async () => {
    install();
    const r = await bench(["latency", moe, "--batch-size", "1,4", "--input-len", "6", "--output-len", "5"]);
    expect(r.stderr).toBe("");
    const h = openEngine(moe).ranks[0].header;
    const kv = h.kv_cache;
    const perToken = 2 * kv.num_layers * kv.num_kv_heads * kv.head_dim * 2;
    const moeLine = (B: number) => {
      const w = decodeStepWeightBytes(h, B);
      expect(w.expertBytes).toBeGreaterThan(0);
      return (
        `  roofline weights: ${(w.bytes / 1e9).toFixed(2)} GB read per step of ${(w.totalBytes / 1e9).toFixed(2)} GB ` +
        `stored (moe: ${(100 * w.expertFraction).toFixed(1)}% of the ${(w.expertBytes / 1e9).toFixed(2)} GB of ` +
        "experts, the expected share of distinct experts a batch this size is routed to)\n"
      );
    };
    // top 2 of 4 experts: half of them at batch 1, 1 − (1/2)^4 = 93.75 % at batch 4
    expect(moeLine(1)).toContain("(moe: 50.0% of the");
    expect(moeLine(4)).toContain("(moe: 93.8% of the");
    const lines = r.stdout.slice(r.stdout.indexOf("batch 1:"));
    expect(lines).toBe(
      batchLine(row(moe, 1, 6, 5, perToken)) +
        moeLine(1) +
        batchLine(row(moe, 4, 6, 5, perToken)) +
        moeLine(4),
    );
  });

  it("--verbose: the kernel report after the runs; no load phases line from an addon without them", async () => {
    install(undefined, { loadStats: undefined });
    const r = await bench(["latency", llama, "--input-len", "6", "--output-len", "5", "--verbose"]);
    expect(r.stderr).toBe("");
    const out = r.stdout.split("\n");
    expect(out.some((l) => l.startsWith("load phases"))).toBe(false);
    expect(out[1]).toMatch(/^Fake GPU 80GB \(sm 90\)/);
    const report = kernelReport(STATS);
    expect(out.slice(-1 - report.length, -1)).toEqual(report);
    expect(out.at(-2 - report.length)).toMatch(/^batch 1: /);
  });

  it("a batch over the engine's max_batch_size is refused before any run; the largest of the list counts", async () => {
    const calls = install();
    const r = await bench([
      "latency",
      llama,
      "--batch-size",
      "2,5,1",
      "--input-len",
      "6",
      "--output-len",
      "5",
    ]);
    expect(r.stderr).toBe("error: --batch-size 5 exceeds the engine's max_batch_size 4\n");
    expect(r.exitCode).toBe(1);
    expect(calls.some((c) => c[0] === "generate" || c[0] === "copyBandwidth")).toBe(false);
    // exactly the maximum runs
    vi.resetModules();
    install();
    const ok = await bench(["latency", llama, "--batch-size", "4", "--input-len", "6", "--output-len", "5"]);
    expect(ok.stderr).toBe("");
    expect(ok.stdout).toContain("batch 4: ");
  });

  it("--json onto a file of the engine is refused, even with --force, before anything loads", async () => {
    // --force took the engine's report.json (or config.json) as any other file and replaced it with the figures.
    const calls = install();
    const engine = path.join(tmpDir(), "engine");
    fs.cpSync(llama, engine, { recursive: true });
    const report = path.join(engine, "report.json");
    const before = fs.readFileSync(report, "utf8");
    const r = await bench([
      "latency",
      engine,
      "--input-len",
      "6",
      "--output-len",
      "5",
      "--json",
      report,
      "--force",
    ]);
    expect(r.stderr).toBe(
      `error: --json ${report}: is ${report}, an input of this command; name another file\n`,
    );
    expect(r.exitCode).toBe(1);
    expect(calls).toEqual([]);
    expect(fs.readFileSync(report, "utf8")).toBe(before);
  });

  it("flags out of range are refused by commander before anything loads", async () => {
    const calls = install();
    for (const [flag, v, rule] of [
      ["--batch-size", "1,0", "≥ 1"],
      ["--input-len", "0", "≥ 1"],
      ["--output-len", "0", "≥ 1"],
      ["--warmup", "-1", "≥ 0"],
      ["--runs", "0", "≥ 1"],
    ]) {
      vi.resetModules();
      const r = await bench(["latency", llama, flag, v]);
      expect(r.exit).toBe("exit 1");
      expect(r.stderr).toBe(
        `error: option '${flag} <n>' argument '${v}' is invalid. Allowed: ${flag} ${rule}.\n` +
          "(tsllm-bench --help lists the flags)\n",
      );
    }
    expect(calls).toEqual([]);
  });

  it("--help: the program's and latency's descriptions, the engine argument, every flag's help and default", async () => {
    const flat = (s: string) => s.replace(/\s+/g, " ").trim();
    const top = await bench(["--help"]);
    expect(top.exit).toBe("exit 0");
    expect(flat(top.stdout)).toContain(
      "Usage: tsllm-bench [options] [command] Benchmarks of an engine: latency (static batch, GPU), prepare-dataset " +
        "and throughput (in-flight batching). Options:",
    );
    expect(flat(top.stdout)).toContain("latency [options] <engine> Generate a batch of random prompts");
    vi.resetModules();
    const r = await bench(["latency", "--help"]);
    expect(r.exit).toBe("exit 0");
    expect(flat(r.stdout)).toBe(
      flat(`Usage: tsllm-bench latency [options] <engine>
        Generate a batch of random prompts and report time to first token, time per output token and output tokens/s,
        after warm-up; then the HBM roofline of one decode step (the weights it reads — all but the embedding rows not
        gathered and the experts a batch is not routed to — and the KV cache, once) at the device-to-device copy
        bandwidth measured in this run.
        Arguments: engine engine directory (tp 1)
        Options:
        --batch-size <n> sequences decoded together (repeatable as 1,8,64) (default: "1")
        --input-len <n> prompt tokens (default: 128)
        --output-len <n> generated tokens (default: 128)
        --warmup <n> untimed runs first (default: 1)
        --runs <n> timed runs (median reported) (default: 3)
        --no-cuda-graphs decode without CUDA graphs
        --fp8-context-fmha <mode> ${r.stdout.slice(r.stdout.indexOf("prompt (context)"), r.stdout.indexOf("--json"))}
        --json <file> also write the figures as JSON
        --force replace an existing --json / --output file that is not an earlier one of the same kind
        --verbose after the runs: which kernels ran, and the runtime's prologue fusions
        --no-verify skip the content-hash check while loading
        -h, --help display help for command`),
    );
  });
});
