// tsllm-bench prepare-dataset and throughput in-process (src/cli/bench-serving.ts addServingCommands on a fresh
// commander program, stdout and stderr captured): the dataset is tokenNormDist's lines, the report is formatReport's
// text over the JSON report's own figures under the header worked out from the engine and the flags, and every
// refusal is one line. (test/serving/bench-cli.test.ts runs the binary as a child process; Stryker's coverage does
// not reach that.)
import * as fs from "node:fs";
import * as path from "node:path";
import tty from "node:tty";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { addServingCommands } from "../../src/cli/bench-serving.ts";
import { command } from "../../src/cli/common.ts";
import { openEngine } from "../../src/engine/reader.ts";
import { InflightBatchManager } from "../../src/serving/batch-manager.ts";
import { formatDatasetLine, readDataset, tokenNormDist } from "../../src/serving/dataset.ts";
import { formatReport, type ThroughputReport } from "../../src/serving/throughput.ts";
import { runCommand } from "../cli-main-helpers.ts";
import { buildFixture, snapshot, tmpDir } from "../fixtures.ts";

// stdin (no --dataset, or --dataset -) from a stand-in for fs.readFileSync(0).
const stdin = vi.hoisted(() => ({ text: null as string | null, reads: 0 }));
vi.mock("node:fs", async (orig) => (await import("../stdin-mock.ts")).fsWithStdin(await orig(), stdin));

// openBatchManager as the command calls it, with what it was asked recorded; on "cuda" (no GPU here) it opens the
// CPU manager instead, so that the cuda defaults (the engine warm-up) can be seen.
const opened = vi.hoisted(() => [] as Record<string, unknown>[]);
vi.mock("../../src/serving/open.ts", async (importOriginal) => {
  const m = await importOriginal<typeof import("../../src/serving/open.ts")>();
  return {
    ...m,
    openBatchManager: async (dir: string, o: Parameters<typeof m.openBatchManager>[1] = {}) => {
      opened.push({ dir, ...o });
      return m.openBatchManager(dir, { ...o, device: "cpu" });
    },
  };
});

let dir: string;
let work: string;

beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 4, tokensPerBlock: 8 });
  work = tmpDir();
});

afterEach(() => {
  vi.restoreAllMocks();
  process.exitCode = undefined;
});

/** tsllm-bench ARGS on a fresh program: stdout, stderr, the exit code main() set, and commander's exit if any. */
async function bench(args: string[], o: { tty?: boolean } = {}) {
  const program = command("tsllm-bench", "benchmarks");
  addServingCommands(program);
  const tty = process.stderr.isTTY;
  if (o.tty) process.stderr.isTTY = true;
  try {
    return await runCommand(() => program.parseAsync([process.execPath, "tsllm-bench", ...args]));
  } finally {
    process.stderr.isTTY = tty;
    vi.restoreAllMocks();
  }
}

const lines = (dist: Parameters<typeof tokenNormDist>[0]) =>
  `${tokenNormDist(dist).map(formatDatasetLine).join("\n")}\n`;

describe("tsllm-bench prepare-dataset (in-process)", () => {
  it("writes tokenNormDist's lines over the engine's vocabulary; defaults: stdev 0, seed 0", async () => {
    const a = await bench([
      "prepare-dataset",
      dir,
      "--num-requests",
      "5",
      "--input-mean",
      "12",
      "--output-mean",
      "7",
    ]);
    expect(a.stderr).toBe("");
    expect(a.exitCode).toBeUndefined();
    const dist = {
      numRequests: 5,
      inputMean: 12,
      inputStdev: 0,
      outputMean: 7,
      outputStdev: 0,
      seed: 0,
      vocabSize: 512,
    };
    expect(a.stdout).toBe(lines(dist));
    const b = await bench([
      "prepare-dataset",
      dir,
      "--num-requests",
      "4",
      "--input-mean",
      "20.5",
      "--input-stdev",
      "6",
      "--output-mean",
      "9",
      "--output-stdev",
      "2.5",
      "--seed",
      "4294967289",
    ]);
    expect(b.stdout).toBe(
      lines({
        ...dist,
        numRequests: 4,
        inputMean: 20.5,
        inputStdev: 6,
        outputMean: 9,
        outputStdev: 2.5,
        seed: 4294967289,
      }),
    );
    expect(
      new Set(
        b.stdout
          .trim()
          .split("\n")
          .map((l) => JSON.parse(l).input_ids.length),
      ).size,
    ).toBeGreaterThan(1);
  });

  it("--output: written whole, nothing on stdout; replaces a dataset; anything else only with --force", async () => {
    const f = path.join(work, "ds.jsonl");
    const args = [
      "prepare-dataset",
      dir,
      "--num-requests",
      "3",
      "--input-mean",
      "4",
      "--output-mean",
      "2",
      "--output",
      f,
    ];
    const dist = {
      numRequests: 3,
      inputMean: 4,
      inputStdev: 0,
      outputMean: 2,
      outputStdev: 0,
      seed: 0,
      vocabSize: 512,
    };
    const a = await bench(args);
    expect([a.stdout, a.stderr, a.exitCode]).toEqual(["", "", undefined]);
    expect(fs.readFileSync(f, "utf8")).toBe(lines(dist));
    expect(fs.readdirSync(work)).toEqual(["ds.jsonl"]);
    fs.writeFileSync(f, '{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    expect((await bench([...args, "--seed", "3"])).exitCode).toBeUndefined();
    expect(fs.readFileSync(f, "utf8")).toBe(lines({ ...dist, seed: 3 }));
    const notes = path.join(work, "notes.txt");
    fs.writeFileSync(notes, "mine\n");
    // Refused before the engine is opened (a missing engine would be another error).
    const r = await bench(["prepare-dataset", "/nonexistent-engine", ...args.slice(2, -1), notes]);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `error: --output ${notes}: exists and is not a dataset written earlier; pass --force to replace it, or name another file\n`,
    );
    expect(r.exitCode).toBe(1);
    expect(fs.readFileSync(notes, "utf8")).toBe("mine\n");
    const forced = await bench([...args.slice(0, -1), notes, "--force"]);
    expect(forced.exitCode).toBeUndefined();
    expect(fs.readFileSync(notes, "utf8")).toBe(lines(dist));
    fs.rmSync(notes);
    // Without --output, a missing engine is the error.
    const m = await bench(["prepare-dataset", "/nonexistent-engine", ...args.slice(2, -2)]);
    expect(m.stderr).toBe("error: /nonexistent-engine: not an engine directory (no config.json)\n");
    expect(m.exitCode).toBe(1);
  });

  it("requests longer than the model's context are refused in one line, nothing written", async () => {
    // (A prompt of 300 million tokens ran V8 out of heap, exit 134, no line naming a flag.)
    const ctx = openEngine(dir).config.facts.maxPositionEmbeddings;
    const out = path.join(work, "too-long.jsonl");
    const run = (input: number, output: number) =>
      bench([
        "prepare-dataset",
        dir,
        ...["--num-requests", "3", "--input-mean", String(input), "--output-mean", String(output)],
        ...["--output", out],
      ]);
    const r = await run(ctx - 1.5, 2);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `error: --input-mean ${ctx - 1.5} + --output-mean 2: requests of ${ctx + 1} tokens exceed the model's ` +
        `context (max_position_embeddings ${ctx})\n`,
    );
    expect(r.exitCode).toBe(1);
    expect(fs.existsSync(out)).toBe(false);
    // At the context exactly: written, each line drawn as written (the whole dataset is never held).
    expect((await run(ctx - 1, 1)).exitCode).toBeUndefined();
    expect(readDataset(out).map((e) => [e.inputIds.length, e.outputTokens])).toEqual([
      [ctx - 1, 1],
      [ctx - 1, 1],
      [ctx - 1, 1],
    ]);
  });

  it("refuses a bad or missing flag with commander's one line", async () => {
    const base = ["--num-requests", "2", "--input-mean", "3", "--output-mean", "2"];
    for (const [args, line] of [
      [
        ["--num-requests", "0"],
        "error: option '--num-requests <n>' argument '0' is invalid. Allowed: --num-requests ≥ 1.",
      ],
      [
        ["--input-mean", "0.5"],
        "error: option '--input-mean <n>' argument '0.5' is invalid. Allowed: --input-mean ≥ 1.",
      ],
      [
        ["--input-stdev", "-1"],
        "error: option '--input-stdev <n>' argument '-1' is invalid. Allowed: --input-stdev ≥ 0.",
      ],
      [
        ["--output-mean", "0"],
        "error: option '--output-mean <n>' argument '0' is invalid. Allowed: --output-mean ≥ 1.",
      ],
      [
        ["--output-stdev", "-2"],
        "error: option '--output-stdev <n>' argument '-2' is invalid. Allowed: --output-stdev ≥ 0.",
      ],
      [
        ["--seed", "1.5"],
        "error: option '--seed <n>' argument '1.5' is invalid. --seed must be an integer, got \"1.5\"",
      ],
      // Past 2^53 - 1 the count is not the integer given: it was "error: Invalid array length", naming no flag.
      [
        ["--num-requests", "99999999999999999999"],
        "error: option '--num-requests <n>' argument '99999999999999999999' is invalid. --num-requests must be an " +
          'integer from -(2^53 - 1) to 2^53 - 1, got "99999999999999999999"',
      ],
      // numpy's seed range (prepare_dataset.py's np.random.seed): 2^32 made the dataset of seed 0 (seed >>> 0).
      [
        ["--seed", "4294967296"],
        "error: option '--seed <n>' argument '4294967296' is invalid. Allowed: --seed in [0, 4294967295].",
      ],
      [
        ["--seed", "-1"],
        "error: option '--seed <n>' argument '-1' is invalid. Allowed: --seed in [0, 4294967295].",
      ],
    ] as const) {
      const r = await bench(["prepare-dataset", dir, ...base, ...args]);
      expect(r.exit, args.join(" ")).toBe("exit 1");
      expect(r.stdout).toBe("");
      expect(r.stderr.split("\n")[0]).toBe(line);
    }
    for (const [missing, flag] of [
      [0, "--num-requests <n>"],
      [2, "--input-mean <n>"],
      [4, "--output-mean <n>"],
    ] as const) {
      const r = await bench([
        "prepare-dataset",
        dir,
        ...base.filter((_, i) => i !== missing && i !== missing + 1),
      ]);
      expect(r.exit).toBe("exit 1");
      expect(r.stderr.split("\n")[0]).toBe(`error: required option '${flag}' not specified`);
    }
  });
});

/** The header lines tsllm-bench throughput writes, from the engine's build and what the run used. */
function header(o: {
  ds: string;
  n: number;
  batch?: number;
  tokens?: number;
  seq?: number;
  blocks?: number;
  policy?: string;
  concurrency?: string;
  eos?: boolean;
}) {
  const b = openEngine(dir).config.build;
  expect([b.dtype, b.kv_cache_dtype, b.max_batch_size, b.max_num_tokens, b.max_seq_len]).toEqual([
    "fp32",
    "fp32",
    4,
    64,
    64,
  ]);
  return [
    `engine        ${dir} (fp32, kv fp32, quant ${b.quant}, built for batch 4 / 64 tokens / seq 64)`,
    "device        cpu: CPU reference executor",
    `limits        max_batch_size ${o.batch ?? 4}, max_num_tokens ${o.tokens ?? 64}, max_seq_len ${o.seq ?? 64}, KV ${o.blocks ?? 32} blocks of 8 tokens`,
    `scheduler     ${o.policy ?? "guaranteed_no_evict"}, concurrency ${o.concurrency ?? "all"}, ${o.eos ? "stops at eos" : "eos ignored"}`,
    `dataset       ${o.ds}: ${o.n} requests`,
  ];
}

describe("tsllm-bench prepare-dataset to stdout (in-process, stdout's write a stand-in)", () => {
  // 8,000 requests of 100 ids: over 3 MB, so written in several parts of 1 MB (datasetParts).
  const dist = { numRequests: 8000, inputMean: 100, inputStdev: 0, outputMean: 2, outputStdev: 0, seed: 0 };
  const args = [
    "prepare-dataset",
    "ENGINE",
    "--num-requests",
    "8000",
    "--input-mean",
    "100",
    "--output-mean",
    "2",
  ];

  /** Runs prepare-dataset with stdout's write as `write`; what was written, part by part. */
  async function prepare(write: (part: string) => boolean, during?: (parts: string[]) => Promise<void>) {
    const program = command("tsllm-bench", "benchmarks");
    addServingCommands(program);
    const parts: string[] = [];
    const realWrite = process.stdout.write;
    const errorListeners = process.stdout.listeners("error");
    vi.spyOn(process.stdout, "write").mockImplementation((s) => {
      parts.push(String(s));
      return write(String(s));
    });
    try {
      const run = program.parseAsync([
        process.execPath,
        "tsllm-bench",
        ...args.map((a) => (a === "ENGINE" ? dir : a)),
      ]);
      await during?.(parts);
      await run;
    } finally {
      vi.restoreAllMocks();
      // (main()'s listener drops stdout's writes after an EPIPE: its own write and listeners put back.)
      process.stdout.write = realWrite;
      for (const l of process.stdout.listeners("error"))
        if (!errorListeners.includes(l)) process.stdout.off("error", l as never);
    }
    expect(process.exitCode).toBeUndefined();
    return parts;
  }
  const turns = async (n: number) => {
    for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
  };

  // process.stdout queues in memory what a pipe cannot take yet: every part was written at once (1M requests piped
  // to a slower reader were held whole, 2 GB).
  it("writes each part once stdout has taken the one before ('drain')", async () => {
    let taken = false;
    const parts = await prepare(
      () => taken,
      async (p) => {
        await turns(50);
        expect(p).toHaveLength(1);
        taken = true;
        process.stdout.emit("drain");
      },
    );
    expect(parts.length).toBeGreaterThan(2);
    expect(parts.join("")).toBe(lines({ ...dist, vocabSize: 512 }));
  });

  // After `prepare-dataset … | head -1` every remaining part was still drawn into the closed pipe (24 s for 3M
  // requests).
  it("stops once stdout's reader is gone (EPIPE), exit code 0", async () => {
    const epipe = Object.assign(new Error("write EPIPE"), { code: "EPIPE" });
    // As a pipe whose reader left: the write's error comes on a later tick.
    const parts = await prepare(() => {
      process.nextTick(() => process.stdout.emit("error", epipe));
      return true;
    });
    expect(parts).toHaveLength(1);
  });
});

/**
 * What a throughput run writes on stderr off a terminal: the header's lines, then progress's lines for its `n` timed
 * requests (one every 2 s while they run, none on a fast run; the last says all were done).
 */
function expectStderr(stderr: string, lines: string[], n: number): void {
  const head = `${lines.join("\n")}\n`;
  expect(stderr.slice(0, head.length)).toBe(head);
  expect(stderr.slice(head.length)).toMatch(
    new RegExp(`^(throughput: \\d+/${n} .*\\n)*throughput: ${n} in [\\d.]+ s, [\\d.]+ req/s\\n$`),
  );
}

describe("tsllm-bench throughput --device cpu (in-process)", () => {
  const dist = {
    numRequests: 6,
    inputMean: 9,
    inputStdev: 3,
    outputMean: 4,
    outputStdev: 1,
    seed: 5,
    vocabSize: 512,
  };
  let ds: string;
  beforeAll(() => {
    ds = path.join(tmpDir(), "ds.jsonl");
    fs.writeFileSync(ds, lines(dist));
  });

  it("the report: the header, formatReport over the JSON report's figures; the warm-up requests run first, untimed", async () => {
    const json = path.join(work, "report.json");
    const r = await bench(["throughput", dir, "--dataset", ds, "--device", "cpu", "--json", json]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    const h = header({ ds, n: 6 });
    expectStderr(r.stderr, h, 6);
    const rep = JSON.parse(fs.readFileSync(json, "utf8")) as ThroughputReport & Record<string, unknown>;
    expect(r.stdout).toBe(`${formatReport(rep, h)}\n`);
    const entries = tokenNormDist(dist);
    expect(rep).toMatchObject({
      tsllm_bench: "throughput",
      engine: dir,
      device: "cpu",
      device_name: "CPU reference executor",
      dtype: "fp32",
      policy: "guaranteed_no_evict",
      limits: { maxBatchSize: 4, maxNumTokens: 64, maxSeqLen: 64, kvBlocksTotal: 32, tokensPerBlock: 8 },
      concurrency: 6,
      dataset: ds,
      engine_warmup: null,
      num_requests: 6,
      finish_reasons: { length: 6 },
      total_input_tokens: entries.reduce((a, e) => a + e.inputIds.length, 0),
      total_output_tokens: entries.reduce((a, e) => a + e.outputTokens, 0),
      kv_blocks_total: 32,
      preemptions: 0,
    });
    expect(Object.keys(rep).slice(0, 10)).toEqual([
      "tsllm_bench",
      "engine",
      "device",
      "device_name",
      "dtype",
      "policy",
      "limits",
      "concurrency",
      "dataset",
      "engine_warmup",
    ]);
    expect(rep.kv_blocks_peak_used).toBeGreaterThan(0);
    expect(rep.admission.peak_batch).toBe(4);
  });

  it("--warmup: that many of the first requests are submitted once more, before the timed run, eos as the run's", async () => {
    const seen: [number[], boolean | undefined][] = [];
    let shutdowns = 0;
    const submit = InflightBatchManager.prototype.submit;
    const shutdown = InflightBatchManager.prototype.shutdown;
    const count = async (extra: string[], data = ds) => {
      seen.length = 0;
      shutdowns = 0;
      vi.spyOn(InflightBatchManager.prototype, "submit").mockImplementation(function (
        this: InflightBatchManager,
        req,
      ) {
        seen.push([[...req.promptIds], req.ignoreEos]);
        return submit.call(this, req);
      });
      vi.spyOn(InflightBatchManager.prototype, "shutdown").mockImplementation(function (
        this: InflightBatchManager,
        ...a
      ) {
        shutdowns++;
        return shutdown.apply(this, a);
      });
      // (bench() restores every mock when it is done, so the spies count one run.)
      const r = await bench(["throughput", dir, "--dataset", data, "--device", "cpu", ...extra]);
      expect(shutdowns).toBe(1);
      return { ...r, seen: seen.slice() };
    };
    const ids = tokenNormDist(dist).map((e) => e.inputIds);
    const ignoring = (xs: number[][], ignoreEos = true) => xs.map((x): [number[], boolean] => [x, ignoreEos]);
    expect((await count([])).seen).toEqual(ignoring([...ids.slice(0, 2), ...ids]));
    expect((await count(["--warmup", "0"])).seen).toEqual(ignoring(ids));
    expect((await count(["--warmup", "1", "--num-requests", "3", "--eos"])).seen).toEqual(
      ignoring([ids[0], ...ids.slice(0, 3)], false),
    );
    // A refused dataset still shuts the manager down.
    const long = path.join(work, "long-shutdown.jsonl");
    fs.writeFileSync(
      long,
      `${JSON.stringify({ task_id: 0, input_ids: Array(60).fill(1), output_tokens: 10 })}\n`,
    );
    const refused = await count([], long);
    expect(refused.exitCode).toBe(1);
    expect(refused.seen).toEqual([]);
  });

  it("preemptions counted in the timed run only, not the warm-up's", async () => {
    // max_utilization over 4 KV blocks (32 tokens): two requests of 8 + 16 tokens (3 blocks each) are both admitted,
    // and one is preempted when the blocks run out.
    const p = path.join(work, "preempt.jsonl");
    fs.writeFileSync(
      p,
      [0, 1]
        .map((t) => JSON.stringify({ task_id: t, input_ids: Array(8).fill(t + 1), output_tokens: 16 }))
        .join("\n"),
    );
    const run = async (warmup: string) => {
      const j = path.join(work, `preempt-${warmup}.json`);
      const r = await bench([
        ...["throughput", dir, "--dataset", p, "--device", "cpu", "--kv-blocks", "4"],
        ...["--scheduler-policy", "max_utilization", "--warmup", warmup, "--json", j],
      ]);
      expect(r.exitCode, r.stderr).toBeUndefined();
      return JSON.parse(fs.readFileSync(j, "utf8")).preemptions as number;
    };
    const alone = await run("0");
    expect(alone).toBeGreaterThan(0);
    expect(await run("2")).toBe(alone);
  });

  it("flags: limits, --kv-blocks, policy, --concurrency, --num-requests, --eos, --engine-warmup", async () => {
    const json = path.join(work, "flags.json");
    const r = await bench([
      "throughput",
      dir,
      "--dataset",
      ds,
      "--device",
      "cpu",
      "--max-batch-size",
      "3",
      "--max-num-tokens",
      "48",
      "--max-seq-len",
      "40",
      "--kv-blocks",
      "12",
      "--scheduler-policy",
      "max_utilization",
      "--concurrency",
      "2",
      "--num-requests",
      "5",
      "--engine-warmup",
      "--json",
      json,
    ]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    const h = header({
      ds,
      n: 5,
      batch: 3,
      tokens: 48,
      seq: 40,
      blocks: 12,
      policy: "max_utilization",
      concurrency: "2",
    });
    const warm = `warm-up       batches 1, 2, 3: ${rep.engine_warmup.steps} steps in ${rep.engine_warmup.ms.toFixed(0)} ms, untimed`;
    expectStderr(r.stderr, [...h, warm], 5);
    expect(r.stdout).toBe(`${formatReport(rep, [...h, warm])}\n`);
    expect(rep.engine_warmup.batch_sizes).toEqual([1, 2, 3]);
    expect(rep.engine_warmup.steps).toBeGreaterThan(0);
    expect(rep).toMatchObject({
      concurrency: 2,
      num_requests: 5,
      policy: "max_utilization",
      kv_blocks_total: 12,
    });
    expect(rep.limits).toMatchObject({ maxBatchSize: 3, maxNumTokens: 48, maxSeqLen: 40, kvBlocksTotal: 12 });
    expect(rep.admission.peak_batch).toBe(2);
    // --no-engine-warmup on cpu: none (its default there).
    const n = await bench([
      "throughput",
      dir,
      "--dataset",
      ds,
      "--device",
      "cpu",
      "--no-engine-warmup",
      "--warmup",
      "0",
    ]);
    expectStderr(n.stderr, header({ ds, n: 6 }), 6);
    // --eos: greedy from 0,3,0 reaches an eos id within 40 tokens (test/serving/run-cli.test.ts).
    const eosDs = path.join(work, "eos.jsonl");
    fs.writeFileSync(eosDs, `${JSON.stringify({ task_id: "e", input_ids: [0, 3, 0], output_tokens: 40 })}\n`);
    const ej = path.join(work, "eos.json");
    const e = await bench(["throughput", dir, "--dataset", eosDs, "--device", "cpu", "--eos", "--json", ej]);
    expectStderr(e.stderr, header({ ds: eosDs, n: 1, eos: true }), 1);
    const er = JSON.parse(fs.readFileSync(ej, "utf8"));
    expect(er.finish_reasons).toEqual({ stop: 1 });
    expect(er.total_output_tokens).toBeLessThan(40);
    const ni = await bench(["throughput", dir, "--dataset", eosDs, "--device", "cpu", "--json", ej]);
    expect(ni.exitCode).toBeUndefined();
    expect(JSON.parse(fs.readFileSync(ej, "utf8")).finish_reasons).toEqual({ length: 1 });
  });

  it("the flags reach openBatchManager; cuda (the default device) warms the engine up unless --no-engine-warmup", async () => {
    opened.length = 0;
    const json = path.join(work, "cuda.json");
    const r = await bench(["throughput", dir, "--dataset", ds, "--warmup", "0", "--json", json]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    const rep = JSON.parse(fs.readFileSync(json, "utf8"));
    const h = header({ ds, n: 6 });
    h[1] = "device        cuda: CPU reference executor";
    const warm = `warm-up       batches 1, 2, 3, 4: ${rep.engine_warmup.steps} steps in ${rep.engine_warmup.ms.toFixed(0)} ms, untimed`;
    expectStderr(r.stderr, [...h, warm], 6);
    expect(r.stdout).toBe(`${formatReport(rep, [...h, warm])}\n`);
    expect(rep.engine_warmup).toEqual({
      batch_sizes: [1, 2, 3, 4],
      steps: rep.engine_warmup.steps,
      ms: rep.engine_warmup.ms,
    });
    expect(rep.device).toBe("cuda");
    const n = await bench([
      ...["throughput", dir, "--dataset", ds, "--device", "cuda", "--no-engine-warmup", "--no-cuda-graphs"],
      ...[
        "--no-overlap",
        "--fp8-context-fmha",
        "off",
        "--kv-cache-free-gpu-mem-fraction",
        "0.25",
        "--kv-blocks",
        "20",
      ],
      ...[
        "--max-batch-size",
        "2",
        "--max-num-tokens",
        "40",
        "--max-seq-len",
        "50",
        "--scheduler-policy",
        "max_utilization",
      ],
    ]);
    expect(n.exitCode, n.stderr).toBeUndefined();
    expect(n.stderr).not.toContain("warm-up");
    expect(opened).toEqual([
      {
        dir,
        device: "cuda",
        verify: false,
        policy: "guaranteed_no_evict",
        maxBatchSize: undefined,
        maxNumTokens: undefined,
        maxSeqLen: undefined,
        kvCacheFreeGpuMemFraction: undefined,
        kvBlocks: undefined,
        cudaGraphs: true,
        fp8ContextFmha: "auto",
        overlap: true,
      },
      {
        dir,
        device: "cuda",
        verify: false,
        policy: "max_utilization",
        maxBatchSize: 2,
        maxNumTokens: 40,
        maxSeqLen: 50,
        kvCacheFreeGpuMemFraction: 0.25,
        kvBlocks: 20,
        cudaGraphs: false,
        fp8ContextFmha: "off",
        overlap: false,
      },
    ]);
  });

  it("a terminal's progress bar counts the requests and their output tokens", async () => {
    const one = path.join(work, "one.jsonl");
    fs.writeFileSync(one, `${JSON.stringify({ task_id: 0, input_ids: [1, 2], output_tokens: 3 })}\n`);
    const r = await bench(["throughput", dir, "--dataset", one, "--device", "cpu", "--warmup", "0"], {
      tty: true,
    });
    expect(r.exitCode, r.stderr).toBeUndefined();
    expect(r.stderr).toContain("\u001b[?25l"); // the cursor hidden while the bar is drawn
    expect(r.stderr).toContain("throughput [");
    expect(r.stderr).toMatch(/\] 100% \| 1\/1 \| [\d.]+ req\/s \| ETA \w+ \| 3 output tokens/);
    expect(r.stderr).toMatch(/\] 0% \| 0\/1 \| /);
    // The cursor shown again, then the final line.
    expect(r.stderr.slice(r.stderr.lastIndexOf("\u001b[?25h"))).toMatch(
      /throughput: 1 in [\d.]+ s, [\d.]+ req\/s\n$/,
    );
  });

  // It said nothing there: cli-progress draws on a terminal only, and a CI log showed no sign of life for the whole
  // timed run.
  it("off a terminal, progress lines: requests done of all, rate, ETA and output tokens", async () => {
    vi.stubEnv("TSLLM_PROGRESS_INTERVAL", "0");
    try {
      const r = await bench([
        "throughput",
        dir,
        "--dataset",
        ds,
        "--device",
        "cpu",
        "--warmup",
        "0",
        "--concurrency=1",
      ]);
      expect(r.exitCode, r.stderr).toBeUndefined();
      const said = r.stderr.split("\n").filter((l) => l.startsWith("throughput: "));
      expect(said[0]).toMatch(/^throughput: 1\/6 \(16%\), [\d.]+ req\/s, ETA [\d.]+ s, \d+ output tokens$/);
      expect(said.at(-1)).toMatch(/^throughput: 6 in [\d.]+ s, [\d.]+ req\/s$/);
      expect(r.stderr).not.toContain("\u001b");
    } finally {
      vi.unstubAllEnvs();
    }
  });

  it("dataset lines: a prompt through the engine's tokenizer; ids checked against the vocabulary; too long refused", async () => {
    const p = path.join(work, "prompt.jsonl");
    fs.writeFileSync(p, `${JSON.stringify({ task_id: 0, prompt: "Hello world", output_tokens: 2 })}\n`);
    const pj = path.join(work, "prompt.json");
    const r = await bench(["throughput", dir, "--dataset", p, "--device", "cpu", "--json", pj]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    // "Hello world" is 9 ids with bos (test/server/bench-serve.test.ts).
    expect(JSON.parse(fs.readFileSync(pj, "utf8")).total_input_tokens).toBe(9);
    const v = path.join(work, "vocab.jsonl");
    fs.writeFileSync(v, `${JSON.stringify({ task_id: 0, input_ids: [1, 512], output_tokens: 2 })}\n`);
    const bad = await bench(["throughput", dir, "--dataset", v, "--device", "cpu"]);
    expect(bad.stderr).toBe(`error: ${v}:1: token id 512 outside the engine's vocabulary (0..511)\n`);
    expect(bad.exitCode).toBe(1);
    const long = path.join(work, "long.jsonl");
    fs.writeFileSync(
      long,
      `${JSON.stringify({ task_id: "ok", input_ids: [1, 2], output_tokens: 2 })}\n\n` +
        `${JSON.stringify({ task_id: "x", input_ids: Array(30).fill(1), output_tokens: 10 })}\n`,
    );
    const l = await bench(["throughput", dir, "--dataset", long, "--device", "cpu", "--max-seq-len", "39"]);
    expect(l.stdout).toBe("");
    expect(l.stderr).toBe(
      `error: ${long}:3: request x: prompt of 30 tokens + output_tokens 10 = 40 exceeds max_seq_len 39 (raise --max-seq-len)\n`,
    );
    expect(l.exitCode).toBe(1);
    // At 40 it runs; --num-requests 1 leaves the long one out at 39.
    expect(
      (await bench(["throughput", dir, "--dataset", long, "--device", "cpu", "--max-seq-len", "40"]))
        .exitCode,
    ).toBeUndefined();
    expect(
      (
        await bench([
          "throughput",
          dir,
          "--dataset",
          long,
          "--device",
          "cpu",
          "--max-seq-len",
          "39",
          "--num-requests",
          "1",
        ])
      ).exitCode,
    ).toBeUndefined();
  });

  it("--json: an earlier report replaced, any other file refused before the run unless --force", async () => {
    const notes = path.join(work, "notes.json");
    fs.writeFileSync(notes, '{"mine": true}\n');
    const r = await bench(["throughput", "/nonexistent-engine", "--dataset", ds, "--json", notes]);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `error: --json ${notes}: exists and is not a tsllm-bench throughput report written earlier; pass --force to replace it, or name another file\n`,
    );
    expect(r.exitCode).toBe(1);
    expect(fs.readFileSync(notes, "utf8")).toBe('{"mine": true}\n');
    const f = await bench([
      "throughput",
      dir,
      "--dataset",
      ds,
      "--device",
      "cpu",
      "--warmup",
      "0",
      "--json",
      notes,
      "--force",
    ]);
    expect(f.exitCode, f.stderr).toBeUndefined();
    expect(JSON.parse(fs.readFileSync(notes, "utf8")).tsllm_bench).toBe("throughput");
  });

  it("--json / --output never replace a file the command reads, even with --force, refused before the run", async () => {
    // --force took them as any other file: prepare-dataset --output ENGINE/config.json put the dataset in place of
    // the engine's config, throughput --json DATASET the report in place of the dataset it had just run.
    const engine = path.join(tmpDir(), "engine");
    fs.cpSync(dir, engine, { recursive: true });
    const data = path.join(path.dirname(engine), "data.jsonl");
    fs.copyFileSync(ds, data);
    const before = snapshot(path.dirname(engine));
    const cfg = path.join(engine, "config.json");
    const gen = ["prepare-dataset", engine, "--num-requests", "2", "--input-mean", "3", "--output-mean", "2"];
    const p = await bench([...gen, "--output", cfg, "--force"]);
    expect([p.stdout, p.stderr, p.exitCode]).toEqual([
      "",
      `error: --output ${cfg}: is ${cfg}, an input of this command; name another file\n`,
      1,
    ]);
    const run = ["throughput", engine, "--dataset", data, "--device", "cpu", "--warmup", "0", "--force"];
    for (const [json, input] of [
      [data, data],
      [path.join(engine, "report.json"), path.join(engine, "report.json")],
    ]) {
      const t = await bench([...run, "--json", json!]);
      expect([t.stdout, t.stderr, t.exitCode]).toEqual([
        "",
        `error: --json ${json}: is ${input}, an input of this command; name another file\n`,
        1,
      ]);
    }
    expect(snapshot(path.dirname(engine))).toEqual(before);
    // A new file inside the engine folder is written.
    expect((await bench([...gen, "--output", path.join(engine, "new.jsonl")])).exitCode).toBeUndefined();
  });

  it("--json in a folder no file can be created in: refused before the run, not after it", async () => {
    // It was found by the write at the end: the whole benchmark ran, then its report was lost.
    const r = await bench(["throughput", dir, "--dataset", ds, "--device", "cpu", "--json", "/proc/r.json"]);
    expect([r.stdout, r.stderr, r.exitCode]).toEqual([
      "",
      "error: --json /proc/r.json: cannot create a file in /proc: ENOENT (no such file or directory)\n",
      1,
    ]);
  });

  it("refuses bad flags with commander's one line", async () => {
    for (const [args, line] of [
      [
        ["--device", "gpu"],
        "error: option '--device <d>' argument 'gpu' is invalid. Allowed choices are cuda, cpu.",
      ],
      [
        ["--kv-blocks", "0"],
        "error: option '--kv-blocks <n>' argument '0' is invalid. Allowed: --kv-blocks ≥ 1.",
      ],
      [
        ["--concurrency", "0"],
        "error: option '--concurrency <n>' argument '0' is invalid. Allowed: --concurrency ≥ 1.",
      ],
      [["--warmup", "-1"], "error: option '--warmup <n>' argument '-1' is invalid. Allowed: --warmup ≥ 0."],
      [
        ["--num-requests", "0"],
        "error: option '--num-requests <n>' argument '0' is invalid. Allowed: --num-requests ≥ 1.",
      ],
      [
        ["--scheduler-policy", "fifo"],
        "error: option '--scheduler-policy <p>' argument 'fifo' is invalid. Allowed choices are guaranteed_no_evict, max_utilization.",
      ],
    ] as const) {
      const r = await bench(["throughput", dir, "--dataset", ds, ...args]);
      expect(r.exit, args.join(" ")).toBe("exit 1");
      expect(r.stderr.split("\n")[0]).toBe(line);
    }
  });

  it("no --dataset or --dataset -: reads stdin, as trtllm-bench; its refusals name <stdin>:line", async () => {
    const line = (o: object) => `${JSON.stringify(o)}\n`;
    const ok = line({ task_id: 0, input_ids: [1, 2, 3], output_tokens: 2 });
    const pj = path.join(work, "stdin.json");
    try {
      for (const args of [[], ["--dataset", "-"]]) {
        stdin.text = ok;
        stdin.reads = 0;
        const r = await bench(["throughput", dir, ...args, "--device", "cpu", "--json", pj, "--force"]);
        expect(r.exitCode, r.stderr).toBeUndefined();
        expect(stdin.reads).toBe(1);
        expect(r.stderr).toContain("dataset       <stdin>: 1 requests");
        const j = JSON.parse(fs.readFileSync(pj, "utf8"));
        expect([j.dataset, j.total_input_tokens, j.total_output_tokens]).toEqual(["<stdin>", 3, 2]);
      }
      // The same validation as a file's lines, file:line becoming <stdin>:line.
      for (const [text, msg] of [
        [
          `\n${line({ task_id: 0, input_ids: [1, 512], output_tokens: 2 })}`,
          "<stdin>:2: token id 512 outside the engine's vocabulary (0..511)",
        ],
        ["{not json\n", "<stdin>:1: not valid JSON ("],
        ["\n\n", "<stdin>: no requests in the dataset"],
        [
          `${ok}${line({ task_id: "x", input_ids: Array(30).fill(1), output_tokens: 10 })}`,
          "<stdin>:2: request x: prompt of 30 tokens + output_tokens 10 = 40 exceeds max_seq_len 39 (raise --max-seq-len)",
        ],
      ]) {
        stdin.text = text;
        const r = await bench([
          "throughput",
          dir,
          "--dataset",
          "-",
          "--device",
          "cpu",
          "--max-seq-len",
          "39",
        ]);
        expect(r.stderr.startsWith(`error: ${msg}`), r.stderr).toBe(true);
        expect(r.stderr.split("\n")).toHaveLength(2);
        expect(r.exitCode).toBe(1);
      }
      // From a terminal it would wait for typed lines: refused, saying what to give.
      // (Asked of the descriptor: process.stdin.isTTY made a piped stdin non-blocking, test/cli-process.test.ts.)
      vi.spyOn(tty, "isatty").mockImplementation((fd) => fd === 0);
      stdin.reads = 0;
      const r = await bench(["throughput", dir]);
      expect(r.stderr).toBe("error: no dataset: give --dataset FILE or pipe one in (stdin is a terminal)\n");
      expect(stdin.reads).toBe(0);
    } finally {
      stdin.text = null;
    }
  });

  it("--help of both commands describes them and their flags", async () => {
    const help = async (cmd: string) => (await bench([cmd, "--help"])).stdout.replace(/\s+/g, " ");
    const p = await help("prepare-dataset");
    for (const s of [
      "Usage: tsllm-bench prepare-dataset [options] <engine>",
      "Write a synthetic benchmark dataset as trtllm-bench reads it (TensorRT-LLM prepare_dataset.py " +
        'token-norm-dist): one {"task_id", "input_ids", "output_tokens"} JSON object per line, lengths drawn ' +
        "from normal distributions (stdev 0: all equal), token ids uniform over the engine's vocabulary.",
      "engine engine directory (for its vocabulary)",
      "--num-requests <n> requests to write",
      "--input-mean <n> mean prompt length",
      "--input-stdev <n> prompt length standard deviation (default: 0)",
      "--output-mean <n> mean output length",
      "--output-stdev <n> output length standard deviation (default: 0)",
      "--seed <n> random seed (default: 0)",
      "--output <file> write here instead of stdout",
      "--force replace an existing --json / --output file",
    ])
      expect(p).toContain(s);
    const t = await help("throughput");
    for (const s of [
      "Usage: tsllm-bench throughput [options] <engine>",
      "Offline throughput over a dataset (trtllm-bench throughput): every request queued at once (or at most " +
        "--concurrency in flight), in-flight batching over the paged KV cache; prints request and token " +
        "throughput, TTFT / TPOT / inter-token / end-to-end latency percentiles, peak KV use and the GPU idle gap " +
        "between steps. Requests generate exactly output_tokens (eos ignored, as trtllm-bench) unless --eos.",
      "engine engine directory (tp 1)",
      "--dataset <file> JSON lines: {task_id, input_ids | prompt, output_tokens} (prepare-dataset); '-' or left out: stdin",
      '--device <d> cuda (native runtime) or cpu (reference executor) (choices: "cuda", "cpu", default: "cuda")',
      "--kv-blocks <n> cap the KV pool at this many blocks",
      '--scheduler-policy <p> batch admission policy (choices: "guaranteed_no_evict", "max_utilization", default: "guaranteed_no_evict")',
      "--concurrency <n> requests in flight at once (default: all)",
      "--warmup <n> requests run first, untimed (default: 2)",
      "--engine-warmup warm the runtime up first, untimed, as tsllm-serve does (default on cuda)",
      "--no-engine-warmup time the run from a cold runtime",
      "--num-requests <n> use only the first n requests of the dataset",
      "--eos stop at the engine's eos ids",
      "--no-cuda-graphs run decode steps eagerly",
      "--no-overlap plan each step after the previous one's tokens are back (no host/GPU overlap)",
      "--json <file> also write the report as JSON",
      "--force replace an existing --json / --output file",
    ])
      expect(t).toContain(s);
  });
});

describe("readDataset (the oracle's own reader)", () => {
  it("reads back what prepare-dataset wrote", async () => {
    const f = path.join(work, "back.jsonl");
    await bench([
      "prepare-dataset",
      dir,
      "--num-requests",
      "2",
      "--input-mean",
      "3",
      "--output-mean",
      "2",
      "--output",
      f,
    ]);
    expect(readDataset(f).map((e) => e.taskId)).toEqual([0, 1]);
  });
});
