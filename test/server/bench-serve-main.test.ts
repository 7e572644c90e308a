// tsllm-bench serve in-process (src/cli/bench-serve.ts addServeBenchCommand on a fresh commander program, stdout and
// stderr captured) against an in-process tsllm-serve (tiny engine, CPU) whose batch manager records what it is
// asked, and against stand-in servers for the answers tsllm-serve never gives: the requests sent are the
// dataset's or tokenNormDist's, the warm-up's first; the report is formatServeBench's text over the JSON report;
// every refusal is one line. (test/server/bench-serve.test.ts runs the binary as a child process; Stryker's
// coverage does not reach that.)
import * as fs from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { addServeBenchCommand } from "../../src/cli/bench-serve.ts";
import { command } from "../../src/cli/common.ts";
import { formatServeBench, type ServeBenchReport } from "../../src/server/bench-client.ts";
import { tokenNormDist } from "../../src/serving/dataset.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { runCommand } from "../cli-main-helpers.ts";
import { buildFixture, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

let s: TestServer;
let keyed: TestServer;
let engine: string;
let work: string;
/** Prompt ids and output lengths the server's batch manager was handed, in order. */
const asked: [number[], number][] = [];

beforeAll(async () => {
  engine = await buildFixture("llama", { maxBatchSize: 8, maxSeqLen: 64, maxNumTokens: 64 });
  work = tmpDir();
  s = await startServer(engine);
  keyed = await startServer(engine, { apiKey: "k1" });
  const submit = s.manager.submit.bind(s.manager);
  s.manager.submit = ((req: { promptIds: number[]; maxNewTokens: number }) => {
    asked.push([[...req.promptIds], req.maxNewTokens]);
    return submit(req as never);
  }) as typeof s.manager.submit;
});
afterAll(async () => {
  await s?.close();
  await keyed?.close();
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllEnvs();
  process.exitCode = undefined;
});

/** tsllm-bench serve ARGS on a fresh program: stdout, stderr, the exit code main() set, and commander's exit. */
async function bench(args: string[]) {
  const program = command("tsllm-bench", "benchmarks");
  addServeBenchCommand(program);
  asked.length = 0;
  return runCommand(() => program.parseAsync([process.execPath, "tsllm-bench", "serve", ...args]));
}

/** The --json report; a percentile JSON wrote as null (NaN: no successful request) read back as NaN. */
const readJson = (f: string) =>
  JSON.parse(fs.readFileSync(f, "utf8"), (k, v) =>
    v === null && ["mean", "p50", "p90", "p99"].includes(k) ? Number.NaN : v,
  ) as ServeBenchReport & { tsllm_bench: string };
const sorted = (xs: [number[], number][]) => xs.map((x) => JSON.stringify(x)).sort();

/** A stand-in server: GET /v1/models answers `models` (status, body); everything else 404. */
async function standIn(status: number, models: unknown, seen: http.IncomingHttpHeaders[] = []) {
  const srv = http.createServer((req, res) => {
    seen.push(req.headers);
    if (req.url === "/v1/models") {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(models));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  return { url, close: () => new Promise<void>((r) => srv.close(() => r())) };
}

describe("tsllm-bench serve (in-process)", () => {
  it("random prompts: tokenNormDist's at the server's vocabulary, the warm-up's first; the report and its JSON", async () => {
    const json = path.join(work, "r.json");
    const r = await bench([
      "--url",
      s.url,
      "--num-prompts",
      "5",
      "--random-input-len",
      "9",
      "--random-output-len",
      "3",
      "--seed",
      "4",
      "--warmup",
      "2",
      "--request-rate",
      "200",
      "--max-concurrency",
      "2",
      "--goodput",
      "ttft:100000",
      "tpot:50000.25",
      "e2el:7",
      "--json",
      json,
    ]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    const entries = tokenNormDist({
      ...{ numRequests: 5, inputMean: 9, inputStdev: 0, outputMean: 3, outputStdev: 0 },
      ...{ seed: 4, vocabSize: 512 },
    });
    const want = entries.map((e): [number[], number] => [e.inputIds, e.outputTokens]);
    expect(asked.slice(0, 2)).toEqual(want.slice(0, 2));
    expect(sorted(asked.slice(2))).toEqual(sorted(want));
    const rep = readJson(json);
    expect(rep.tsllm_bench).toBe("serve");
    expect(rep).toMatchObject({
      successful_requests: 5,
      failed_requests: 0,
      request_rate: 200,
      max_concurrency: 2,
      total_input_tokens: 45,
      total_output_tokens: 15,
      slo_ms: { ttft: 100000, tpot: 50000.25, e2el: 7 },
    });
    expect(r.stdout).toBe(
      `5 requests to ${s.url} (model "tiny") at 200 req/s (Poisson), at most 2 in flight\n${formatServeBench(rep)}`,
    );
    // Progress off a terminal (progress()): a line every few seconds while it runs, then what was done, how fast.
    expect(r.stderr).toMatch(
      /^(requests: [0-4]\/5 \(\d+%\), .*\n)*requests: 5 in \d+\.\d s, \d+\.\d req\/s\n$/,
    );
  });

  it("defaults: 100 prompts of 128 tokens, 128 out, inf rate, one warm-up request; --model and --api-key sent", async () => {
    // An unknown model: each request is refused (HTTP 404), and the run says so after its report.
    const j = path.join(work, "fail.json");
    const r = await bench([
      "--url",
      keyed.url,
      "--api-key",
      "k1",
      "--warmup",
      "0",
      "--model",
      "nope",
      "--json",
      j,
    ]);
    const rep = readJson(j);
    expect(rep).toMatchObject({
      successful_requests: 0,
      failed_requests: 100,
      request_rate: "inf",
      max_concurrency: null,
    });
    expect(rep.first_error).toMatch(/^HTTP 404: /);
    expect(r.stdout).toBe(
      `100 requests to ${keyed.url} (model "nope") at inf req/s\n${formatServeBench(rep)}`,
    );
    expect(r.exitCode).toBe(1);
    expect(r.stderr.endsWith(`\nerror: every request failed (first: ${rep.first_error})\n`)).toBe(true);
    // The warm-up request (default 1) fails first, and nothing is timed.
    const w = await bench(["--url", keyed.url, "--model", "nope"]);
    vi.stubEnv("TSLLM_API_KEY", "k1");
    const w2 = await bench(["--url", keyed.url, "--model", "nope"]);
    expect([w.exitCode, w2.exitCode]).toEqual([1, 1]);
    // Without a key (none given, none in the environment) the server refuses the first question.
    expect(w.stdout).toBe("");
    expect(w.stderr).toBe(`error: --url ${keyed.url}: GET /v1/models answered HTTP 401\n`);
    expect(w2.stdout).toBe(`100 requests to ${keyed.url} (model "nope") at inf req/s\n`);
    expect(w2.stderr).toBe(`error: warm-up request failed: ${rep.first_error}\n`);
    // With a length the engine holds, from $TSLLM_API_KEY: tokenNormDist at seed 0, 128 → 20 in, 128 → 4 out.
    const oj = path.join(work, "ok.json");
    const ok = await bench([
      ...[
        "--url",
        keyed.url,
        "--random-input-len",
        "20",
        "--random-output-len",
        "4",
        "--num-prompts",
        "3",
        "--json",
        oj,
      ],
    ]);
    expect(ok.exitCode, ok.stderr).toBeUndefined();
    const orep = readJson(oj);
    expect(orep).toMatchObject({ successful_requests: 3, total_input_tokens: 60, total_output_tokens: 12 });
    expect(ok.stdout).toBe(
      `3 requests to ${keyed.url} (model "tiny") at inf req/s\n${formatServeBench(orep)}`,
    );
  });

  it("a dataset: its lines (the first --num-prompts), prompts through --tokenizer, ids checked against the vocabulary", async () => {
    const ds = path.join(work, "ds.jsonl");
    fs.writeFileSync(
      ds,
      '{"task_id": 0, "prompt": "Hello world", "output_tokens": 3}\n' +
        '{"task_id": 1, "input_ids": [1, 2, 3], "output_tokens": 2}\n' +
        '{"task_id": 2, "input_ids": [4, 5], "output_tokens": 1}\n',
    );
    const hello = TextTokenizer.load(TINY_LLAMA).encode("Hello world");
    const r = await bench([
      "--url",
      `${s.url}//`,
      "--dataset",
      ds,
      "--tokenizer",
      engine,
      "--warmup",
      "0",
      "--num-prompts",
      "2",
    ]);
    expect(r.exitCode, r.stderr).toBeUndefined();
    expect(sorted(asked)).toEqual(
      sorted([
        [hello, 3],
        [[1, 2, 3], 2],
      ]),
    );
    expect(r.stdout.split("\n")[0]).toBe(`2 requests to ${s.url}// (model "tiny") at inf req/s`);
    // --warmup 0 sends no warm-up request.
    const neg = await bench(["--url", s.url, "--dataset", ds, "--tokenizer", engine, "--warmup", "0"]);
    expect(neg.exitCode, neg.stderr).toBeUndefined();
    expect(sorted(asked)).toEqual(
      sorted([
        [hello, 3],
        [[1, 2, 3], 2],
        [[4, 5], 1],
      ]),
    );
    // Without --tokenizer a "prompt" line cannot be read.
    const n = await bench(["--url", s.url, "--dataset", ds]);
    expect(n.stderr).toBe(
      `error: ${ds}:1: a "prompt" line needs a tokenizer; this engine has none (give "input_ids")\n`,
    );
    const bare = tmpDir();
    const t = await bench(["--url", s.url, "--dataset", ds, "--tokenizer", bare]);
    expect(t.stderr).toBe(`error: --tokenizer needs a tokenizer: ${bare} has no tokenizer.json\n`);
    const v = path.join(work, "vocab.jsonl");
    fs.writeFileSync(v, '{"task_id": 0, "input_ids": [1, 512], "output_tokens": 2}\n');
    const b = await bench(["--url", s.url, "--dataset", v]);
    expect(b.stderr).toBe(`error: ${v}:1: token id 512 outside the engine's vocabulary (0..511)\n`);
    expect(asked).toEqual([]);
  });

  it("what the server answers to GET /v1/models: unreachable, an HTTP error, no model, no vocab_size", async () => {
    const seen: http.IncomingHttpHeaders[] = [];
    const gone = await standIn(200, {});
    await gone.close();
    const r = await bench(["--url", gone.url]);
    expect(r.stderr).toBe(`error: --url ${gone.url}: cannot reach the server (fetch failed)\n`);
    expect(r.exitCode).toBe(1);
    const e = await standIn(500, {}, seen);
    try {
      expect((await bench(["--url", e.url])).stderr).toBe(
        `error: --url ${e.url}: GET /v1/models answered HTTP 500\n`,
      );
      expect(seen.map((h) => h.authorization)).toEqual([undefined]);
      vi.stubEnv("TSLLM_API_KEY", "from-env");
      await bench(["--url", e.url]);
      await bench(["--url", e.url, "--api-key", "flag"]);
      expect(seen.map((h) => h.authorization)).toEqual([undefined, "Bearer from-env", "Bearer flag"]);
    } finally {
      await e.close();
    }
    for (const body of [{}, { data: [] }]) {
      const x = await standIn(200, body);
      try {
        expect((await bench(["--url", x.url])).stderr).toBe(
          `error: --url ${x.url}: GET /v1/models lists no model\n`,
        );
      } finally {
        await x.close();
      }
    }
    const nv = await standIn(200, { data: [{ id: "m" }, { id: "other", vocab_size: 9 }] });
    try {
      const r2 = await bench(["--url", nv.url]);
      expect(r2.stderr).toBe(
        `error: --url ${nv.url}: the server does not say its vocab_size; give --dataset FILE\n`,
      );
      expect(r2.stdout).toBe("");
    } finally {
      await nv.close();
    }
  });

  it("refuses bad values with one line, before any request", async () => {
    for (const [args, line] of [
      [["--request-rate", "0"], "error: --request-rate must be > 0 or inf, got 0"],
      [["--request-rate", "-2"], "error: --request-rate must be > 0 or inf, got -2"],
      [["--request-rate", "fast"], 'error: --request-rate must be a number, got "fast"'],
      // Flags without a range took 0 or less: --max-concurrency 0 printed "at most 0 in flight" and ran with no
      // limit, --warmup -1 meant 0, --random-input-len 0 sent 1-token prompts.
      [
        ["--num-prompts", "0"],
        "error: option '--num-prompts <n>' argument '0' is invalid. Allowed: --num-prompts ≥ 1.",
      ],
      [
        ["--max-concurrency", "0"],
        "error: option '--max-concurrency <n>' argument '0' is invalid. Allowed: --max-concurrency ≥ 1.",
      ],
      [["--warmup", "-1"], "error: option '--warmup <n>' argument '-1' is invalid. Allowed: --warmup ≥ 0."],
      [
        ["--random-input-len", "0"],
        "error: option '--random-input-len <n>' argument '0' is invalid. Allowed: --random-input-len ≥ 1.",
      ],
      [
        ["--random-output-len", "0"],
        "error: option '--random-output-len <n>' argument '0' is invalid. Allowed: --random-output-len ≥ 1.",
      ],
      [
        ["--goodput", "ttft:1", "latency:5"],
        "error: --goodput latency:5: expected ttft:MS, tpot:MS or e2el:MS",
      ],
      [["--goodput", "xttft:1"], "error: --goodput xttft:1: expected ttft:MS, tpot:MS or e2el:MS"],
      [["--goodput", "tpot:1.5ms"], "error: --goodput tpot:1.5ms: expected ttft:MS, tpot:MS or e2el:MS"],
      [["--goodput", "e2el:.5"], "error: --goodput e2el:.5: expected ttft:MS, tpot:MS or e2el:MS"],
    ] as const) {
      const r = await bench([
        "--url",
        s.url,
        "--num-prompts",
        "1",
        "--random-input-len",
        "2",
        "--random-output-len",
        "1",
        ...args,
      ]);
      // commander's own refusals add a line pointing at --help
      if (line.startsWith("error: option")) {
        expect(r.stderr.split("\n")[0], args.join(" ")).toBe(line);
        expect(r.exit).toBe("exit 1");
      } else {
        expect(r.stderr, args.join(" ")).toBe(`${line}\n`);
        expect(r.exitCode).toBe(1);
      }
      expect(asked).toEqual([]);
    }
    for (const f of [
      "--num-prompts",
      "--random-input-len",
      "--random-output-len",
      "--max-concurrency",
      "--seed",
      "--warmup",
    ]) {
      const r = await bench(["--url", s.url, f, "1.5"]);
      expect(r.exit).toBe("exit 1");
      expect(r.stderr.split("\n")[0]).toBe(
        `error: option '${f} <n>' argument '1.5' is invalid. ${f} must be an integer, got "1.5"`,
      );
    }
    const j = path.join(work, "notes.json");
    fs.writeFileSync(j, "{}\n");
    const r = await bench(["--url", "http://127.0.0.1:9", "--json", j]);
    expect(r.stderr).toBe(
      `error: --json ${j}: exists and is not a tsllm-bench serve report written earlier; pass --force to replace it, or name another file\n`,
    );
    const f = await bench([
      "--url",
      s.url,
      "--num-prompts",
      "1",
      "--random-input-len",
      "2",
      "--random-output-len",
      "1",
      "--json",
      j,
      "--force",
    ]);
    expect(f.exitCode, f.stderr).toBeUndefined();
    expect(readJson(j).tsllm_bench).toBe("serve");
    const m = await bench([]);
    expect(m.exit).toBe("exit 1");
    expect(m.stderr.split("\n")[0]).toBe("error: required option '--url <url>' not specified");
    const i = await bench(["--url", s.url, "--warmup", "x"]);
    expect(i.stderr.split("\n")[0]).toBe(
      `error: option '--warmup <n>' argument 'x' is invalid. --warmup must be an integer, got "x"`,
    );
  });

  it("--json onto the dataset or a --tokenizer file is refused, even with --force, before any request", async () => {
    // --force took the dataset as any other file: the report replaced the dataset the run had read.
    const ds = path.join(work, "serve-ds.jsonl");
    fs.writeFileSync(ds, '{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    const tok = path.join(work, "tok");
    fs.mkdirSync(tok);
    fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(tok, "tokenizer.json"));
    const tj = path.join(tok, "tokenizer.json");
    for (const j of [ds, tj]) {
      // An unreachable server: refused before it is asked anything.
      const r = await bench([
        "--url",
        "http://127.0.0.1:9",
        "--dataset",
        ds,
        "--tokenizer",
        tok,
        "--json",
        j,
        "--force",
      ]);
      expect(r.stderr).toBe(`error: --json ${j}: is ${j}, an input of this command; name another file\n`);
      expect(r.exitCode).toBe(1);
    }
    expect(fs.readFileSync(ds, "utf8")).toBe('{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    expect(fs.readFileSync(tj)).toEqual(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer.json")));
  });

  it("--help describes the command and its flags", async () => {
    const help = (await bench(["--help"])).stdout.replace(/\s+/g, " ");
    for (const x of [
      "Usage: tsllm-bench serve [options]",
      "Online serving benchmark (like vllm bench serve): streamed /v1/completions requests to a running " +
        "server (tsllm-serve or any OpenAI-compatible one) at --request-rate (Poisson) and/or " +
        "--max-concurrency; prints TTFT, TPOT, inter-token and end-to-end latency (mean, p50, p90, p99), " +
        "request and token throughput, and goodput for the --goodput SLOs. Requests ignore eos, so each " +
        "generates exactly its output length.",
      "--url <url> server base URL, e.g. http://127.0.0.1:8000",
      "--model <name> model name (default: the first the server lists)",
      "--dataset <file> trtllm-bench JSONL dataset (tsllm-bench prepare-dataset); default: random prompts",
      `--tokenizer <dir> engine or model folder whose tokenizer encodes a dataset's "prompt" lines`,
      "--num-prompts <n> random prompts to send (or the first N of the dataset) (default: 100)",
      "--random-input-len <n> random prompt length in tokens (default: 128)",
      "--random-output-len <n> tokens to generate per random prompt (default: 128)",
      '--request-rate <r> requests per second, Poisson arrivals (inf: all at once) (default: "inf")',
      "--max-concurrency <n> most requests in flight",
      "--goodput <slo...> SLOs in ms for goodput: ttft:MS tpot:MS e2el:MS",
      "--warmup <n> requests sent (and waited for) before timing (default: 1)",
      "--seed <n> random prompts and arrival times (default: 0)",
      "--api-key <key> Bearer key (default: $TSLLM_API_KEY)",
      "--json <file> also write the report as JSON",
      "--force replace an existing --json / --output file",
    ])
      expect(help).toContain(x);
  });

  it("--help wraps the description at the help width, with no hard line breaks of its own", async () => {
    // The description was written with "\n" every ~95 characters, which commander then wrapped again at 80:
    // a short line ("requests to a running") after each of its own long ones.
    const lines = (await bench(["--help"])).stdout.split("\n\n")[1].split("\n");
    expect(lines[0]).toMatch(/^Online serving benchmark/);
    expect(lines.length).toBeGreaterThan(2);
    for (const line of lines.slice(0, -1)) expect(line.length, line).toBeGreaterThan(60);
  });
});
