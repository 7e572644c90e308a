// tsllm-serve in-process (src/cli/serve.ts tsllmServe, stdout and stderr captured, stopped through its AbortSignal
// as SIGTERM would): the line saying where it listens, the limits and tokenizer it serves with, generation equal to
// the executor's own greedy loop, the API key, --no-verify, the drain that lets a running stream finish, and the
// usage errors. (test/server/cli.test.ts runs the same binary as a child process; Stryker's coverage does not
// reach that.)
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { capture } from "../cli-main-helpers.ts";
import { buildFixture, corruptLastWeightByte, tmpDir } from "../fixtures.ts";
import { greedyOracle } from "./helpers.ts";

// openBatchManager as the command calls it, with what it was asked recorded; `cuda` makes it open the CPU manager in
// place of the native runtime and have it say "cuda", with a warm-up that reports fixed figures (no GPU here).
const hooks = vi.hoisted(() => ({ opened: [] as Record<string, unknown>[], cuda: false, warmups: 0 }));
vi.mock("../../src/serving/open.ts", async (importOriginal) => {
  const m = await importOriginal<typeof import("../../src/serving/open.ts")>();
  return {
    ...m,
    openBatchManager: async (dir: string, o: Parameters<typeof m.openBatchManager>[1] = {}) => {
      hooks.opened.push({ dir, ...o });
      const bm = await m.openBatchManager(dir, hooks.cuda ? { ...o, device: "cpu" } : o);
      if (hooks.cuda) {
        const info = { ...bm.backendInfo, device: "cuda" as const };
        Object.defineProperty(bm, "backendInfo", { get: () => info });
        bm.warmup = async () => {
          hooks.warmups++;
          return { ms: 12.4, batchSizes: [1, 2], steps: 3 };
        };
      }
      return bm;
    },
  };
});

let engine: string;
let corrupt: string;
let noTok: string;
let tsllmServe: (argv: readonly string[], stop?: AbortSignal) => Promise<void>;
let imported: {
  stderr: string;
  stdout: string;
  exitCode: typeof process.exitCode;
  exits: unknown[][];
  missing: string;
};

beforeAll(async () => {
  const o = { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 4, tokensPerBlock: 8 };
  engine = await buildFixture("llama", o);
  corrupt = await buildFixture("llama", o);
  corruptLastWeightByte(corrupt, openEngine(corrupt).config.ranks[0].file);
  // A copy of the engine whose config names no tokenizer.
  noTok = path.join(tmpDir(), "bare");
  fs.cpSync(engine, noTok, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(noTok, "config.json"), "utf8"));
  delete cfg.tokenizer;
  fs.writeFileSync(path.join(noTok, "config.json"), JSON.stringify(cfg));
  // Importing the module runs tsllm-serve on process.argv once, then exits: a missing engine here, and the exit
  // replaced by a recording stand-in.
  const argv = process.argv;
  const missing = path.join(tmpDir(), "missing");
  process.argv = [process.execPath, "tsllm-serve", missing];
  const exit = vi.spyOn(process, "exit").mockImplementation((() => undefined) as never);
  const c = capture();
  try {
    ({ tsllmServe } = await import("../../src/cli/serve.ts"));
  } finally {
    c.restore();
    process.argv = argv;
  }
  imported = { ...c.io, exitCode: process.exitCode, exits: exit.mock.calls.map((a) => [...a]), missing };
  exit.mockRestore();
  process.exitCode = undefined;
});
afterEach(() => {
  vi.restoreAllMocks();
});
afterAll(() => {
  vi.restoreAllMocks();
});

interface Running {
  url: string;
  io: { stdout: string; stderr: string };
  /** Aborts with `reason`, waits for tsllmServe to return; restores stdout / stderr. */
  stop(reason?: string): Promise<void>;
  /** tsllmServe's own promise (settles when it returns). */
  done: Promise<void>;
}

/** tsllm-serve ENGINE --port 0 ARGS, in-process, until stop(). */
async function serve(args: string[], dir = engine): Promise<Running> {
  const ac = new AbortController();
  const c = capture();
  const done = tsllmServe([process.execPath, "tsllm-serve", dir, "--port", "0", ...args], ac.signal);
  let failed: unknown;
  done.catch((e) => {
    failed = e;
  });
  for (let i = 0; i < 600 && !/ on http:\/\/\S+ /.test(c.io.stdout) && failed === undefined; i++)
    await new Promise((r) => setTimeout(r, 20));
  const url = / on (http:\/\/\S+) /.exec(c.io.stdout)?.[1];
  if (!url) {
    ac.abort("SIGTERM");
    c.restore();
    throw new Error(`not listening: ${String(failed)} ${c.io.stdout} ${c.io.stderr}`);
  }
  return {
    url,
    io: c.io,
    done,
    async stop(reason = "SIGTERM") {
      ac.abort(reason);
      try {
        await done;
      } finally {
        c.restore();
      }
    },
  };
}

async function complete(url: string, body: object, key?: string) {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: JSON.stringify({
      model: "tiny",
      temperature: 0,
      ignore_eos: true,
      return_token_ids: true,
      ...body,
    }),
  });
  return { status: res.status, body: (await res.json()) as { choices: { token_ids: number[] }[] } };
}

const PROMPT = [507, 1, 2, 3];

describe("tsllm-serve (in-process)", () => {
  it("the module runs tsllm-serve on process.argv, then exits: a missing engine is one error line, exit code 1", () => {
    expect(imported.stderr).toBe(`error: ${imported.missing}: not an engine directory (no config.json)\n`);
    expect(imported.stdout).toBe("");
    expect(imported.exitCode).toBe(1);
    expect(imported.exits).toEqual([[]]);
  });

  it("says where it listens and with what limits; serves the executor's greedy tokens; stops on its signal", async () => {
    const before = [process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")];
    const s = await serve(["--device", "cpu", "--served-model-name", "tiny"]);
    let stopped = false;
    try {
      expect(s.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(s.io.stdout).toBe(
        `tsllm-serve: "tiny" on ${s.url} (max_batch_size 4, max_seq_len 64, 32 KV blocks of 8 tokens)\n`,
      );
      expect([process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")]).toEqual([
        before[0] + 1,
        before[1] + 1,
      ]);
      const models = (await (await fetch(`${s.url}/v1/models`)).json()) as { data: { id: string }[] };
      expect(models.data.map((m) => m.id)).toEqual(["tiny"]);
      const r = await complete(s.url, { prompt: PROMPT, max_tokens: 6 });
      expect(r.status).toBe(200);
      expect(r.body.choices[0].token_ids).toEqual(greedyOracle(engine, PROMPT, 6, []));
      // The tokenizer is the engine's: a text prompt is served.
      const t = await complete(s.url, { prompt: "Hello", max_tokens: 2 });
      expect(t.status).toBe(200);
      expect(t.body.choices[0].token_ids).toHaveLength(2);
      expect(process.env.TSLLM_API_KEY).toBeUndefined();
      await s.stop();
      stopped = true;
    } finally {
      if (!stopped) await s.stop();
    }
    expect(s.io.stdout.split("\n").slice(1)).toEqual([
      "tsllm-serve: SIGTERM: not accepting new requests, draining (up to 30 s)",
      "tsllm-serve: stopped",
      "",
    ]);
    expect(s.io.stderr).toBe("");
    expect([process.listenerCount("SIGTERM"), process.listenerCount("SIGINT")]).toEqual(before);
    // Stopped listening.
    expect(
      await fetch(`${s.url}/health`).then(
        (r) => r.status,
        () => "refused",
      ),
    ).toBe("refused");
  });

  it("the drain lets a running stream finish, refuses new requests; the abort's reason is named; --drain-timeout", async () => {
    const s = await serve(["--device", "cpu", "--served-model-name", "tiny", "--drain-timeout", "20.5"]);
    let stopping: Promise<void> | undefined;
    try {
      const res = await fetch(`${s.url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          model: "tiny",
          prompt: PROMPT,
          max_tokens: 40,
          temperature: 0,
          ignore_eos: true,
          return_token_ids: true,
          stream: true,
        }),
      });
      const reader = res.body!.getReader();
      const dec = new TextDecoder();
      let text = "";
      const ids = () =>
        text
          .split("\n")
          .filter((l) => l.startsWith("data: {"))
          .flatMap(
            (l) =>
              (JSON.parse(l.slice(6)) as { choices: { token_ids?: number[] }[] }).choices[0]?.token_ids ?? [],
          );
      while (ids().length < 2) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
      }
      stopping = s.stop("SIGINT");
      await new Promise((r) => setTimeout(r, 50));
      const late = await fetch(`${s.url}/v1/models`).then(
        (r) => r.status,
        () => "refused",
      );
      expect([503, "refused"]).toContain(late);
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += dec.decode(value, { stream: true });
      }
      expect(ids()).toEqual(greedyOracle(engine, PROMPT, 40, []));
      expect(text.trimEnd().endsWith("data: [DONE]")).toBe(true);
      await stopping;
    } finally {
      await (stopping ?? s.stop());
    }
    expect(s.io.stdout.split("\n").slice(1)).toEqual([
      "tsllm-serve: SIGINT: not accepting new requests, draining (up to 20.5 s)",
      "tsllm-serve: stopped",
      "",
    ]);
  });

  it("without an AbortSignal: SIGTERM's and SIGINT's listeners drain it, each naming its signal", async () => {
    for (const sig of ["SIGTERM", "SIGINT"] as const) {
      const pre = [...process.listeners("SIGTERM"), ...process.listeners("SIGINT")];
      const c = capture();
      let done: Promise<void> | undefined;
      try {
        done = tsllmServe([process.execPath, "tsllm-serve", engine, "--device", "cpu", "--port", "0"]);
        for (let i = 0; i < 500 && !c.io.stdout.includes(" on http://"); i++)
          await new Promise((r) => setTimeout(r, 10));
        const mine = process.listeners(sig).filter((l) => !pre.includes(l));
        expect(mine).toHaveLength(1);
        (mine[0] as () => void)();
        await done;
      } finally {
        c.restore();
      }
      expect(c.io.stdout.split("\n").slice(1)).toEqual([
        `tsllm-serve: ${sig}: not accepting new requests, draining (up to 30 s)`,
        "tsllm-serve: stopped",
        "",
      ]);
      expect([...process.listeners("SIGTERM"), ...process.listeners("SIGINT")]).toEqual(pre);
    }
  });

  it("a signal already aborted stops it as soon as it listens", async () => {
    const ac = new AbortController();
    ac.abort("done-before");
    const c = capture();
    try {
      await tsllmServe(
        [
          process.execPath,
          "tsllm-serve",
          engine,
          "--device",
          "cpu",
          "--port",
          "0",
          "--served-model-name",
          "x",
        ],
        ac.signal,
      );
    } finally {
      c.restore();
    }
    const lines = c.io.stdout.split("\n");
    expect(lines[0]).toMatch(/^tsllm-serve: "x" on http:\/\/127\.0\.0\.1:\d+ \(max_batch_size 4, /);
    expect(lines.slice(1)).toEqual([
      "tsllm-serve: done-before: not accepting new requests, draining (up to 30 s)",
      "tsllm-serve: stopped",
      "",
    ]);
  });

  it("default name: the engine folder's; limits from the flags; no tokenizer said; --api-key and $TSLLM_API_KEY", async () => {
    const s = await serve(
      ["--device", "cpu", "--max-batch-size", "2", "--max-seq-len", "32", "--api-key", "k1"],
      `${noTok}/.`,
    );
    try {
      expect(s.io.stdout).toBe(
        `tsllm-serve: "bare" on ${s.url} (max_batch_size 2, max_seq_len 32, 8 KV blocks of 8 tokens); ` +
          `engine ${noTok}/. has no tokenizer (rebuild from a folder with tokenizer.json, or with --tokenizer DIR); token ids still work\n`,
      );
      expect((await complete(s.url, { model: "bare", prompt: PROMPT, max_tokens: 1 })).status).toBe(401);
      expect((await complete(s.url, { model: "bare", prompt: PROMPT, max_tokens: 1 }, "k2")).status).toBe(
        401,
      );
      const ok = await complete(s.url, { model: "bare", prompt: PROMPT, max_tokens: 3 }, "k1");
      expect(ok.status).toBe(200);
      expect(ok.body.choices[0].token_ids).toEqual(greedyOracle(engine, PROMPT, 3, []));
    } finally {
      await s.stop();
    }
    vi.stubEnv("TSLLM_API_KEY", "envkey");
    const e = await serve(["--device", "cpu", "--served-model-name", "tiny"]);
    try {
      expect((await complete(e.url, { prompt: PROMPT, max_tokens: 1 })).status).toBe(401);
      expect((await complete(e.url, { prompt: PROMPT, max_tokens: 1 }, "envkey")).status).toBe(200);
    } finally {
      await e.stop();
      vi.unstubAllEnvs();
    }
  });

  it("vLLM's CORS flags: --allowed-origins, --allow-credentials; any origin by default; /v1/models' root is the engine as given", async () => {
    const origin = { origin: "https://a.example" };
    const s = await serve([
      "--device",
      "cpu",
      "--allowed-origins",
      '["https://a.example"]',
      "--allow-credentials",
    ]);
    try {
      const r = await fetch(`${s.url}/v1/models`, { headers: origin });
      expect([
        r.headers.get("access-control-allow-origin"),
        r.headers.get("access-control-allow-credentials"),
      ]).toEqual(["https://a.example", "true"]);
      expect((await r.json()).data[0]).toMatchObject({ root: engine, parent: null });
      const other = await fetch(`${s.url}/v1/models`, { headers: { origin: "https://b.example" } });
      expect(other.headers.get("access-control-allow-origin")).toBeNull();
    } finally {
      await s.stop();
    }
    const d = await serve(["--device", "cpu"]);
    try {
      const r = await fetch(`${d.url}/v1/models`, { headers: origin });
      expect([
        r.headers.get("access-control-allow-origin"),
        r.headers.get("access-control-allow-credentials"),
      ]).toEqual(["*", null]);
    } finally {
      await d.stop();
    }
  });

  it("the content hash is checked unless --no-verify; --max-queue bounds the waiting requests", async () => {
    const c = capture();
    const err = await tsllmServe(
      [process.execPath, "tsllm-serve", corrupt, "--device", "cpu", "--port", "0"],
      AbortSignal.abort("x"),
    ).then(
      () => null,
      (e: unknown) => e as Error,
    );
    c.restore();
    expect(err?.message).toMatch(/hash/);
    expect(c.io.stdout).toBe("");
    const s = await serve(
      ["--device", "cpu", "--no-verify", "--max-queue", "1", "--max-batch-size", "1"],
      corrupt,
    );
    try {
      expect(s.io.stdout).toMatch(/^tsllm-serve: "engine" on /);
      // One request runs, one waits; a third is refused (429).
      const body = { model: "engine", prompt: PROMPT, max_tokens: 60 };
      const first = complete(s.url, body);
      await new Promise((r) => setTimeout(r, 20));
      const later = await Promise.all([complete(s.url, body), complete(s.url, body)]);
      expect(later.map((r) => r.status).sort()).toEqual([200, 429]);
      expect((await first).status).toBe(200);
    } finally {
      await s.stop();
    }
  });

  it("the flags reach openBatchManager; on cuda it warms up before listening unless --no-warmup", async () => {
    hooks.cuda = true;
    hooks.opened.length = 0;
    hooks.warmups = 0;
    try {
      const s = await serve(
        [
          ...["--device", "cuda", "--scheduler-policy", "max_utilization", "--max-batch-size", "2"],
          ...["--max-num-tokens", "32", "--max-seq-len", "48", "--kv-cache-free-gpu-mem-fraction", "0.5"],
          ...["--fp8-context-fmha", "on", "--no-verify", "--host", "127.0.0.1"],
        ],
        corrupt,
      );
      await s.stop();
      expect(hooks.opened).toEqual([
        {
          dir: corrupt,
          device: "cuda",
          policy: "max_utilization",
          maxBatchSize: 2,
          maxNumTokens: 32,
          maxSeqLen: 48,
          kvCacheFreeGpuMemFraction: 0.5,
          fp8ContextFmha: "on",
          verify: false,
        },
      ]);
      expect(hooks.warmups).toBe(1);
      const out = s.io.stdout.split("\n");
      expect(out[0]).toBe(
        "tsllm-serve: warm-up (CUDA graphs, kernel tuning): batches 1, 2: 3 steps in 12 ms",
      );
      expect(out[1]).toMatch(
        /^tsllm-serve: "engine" on http:\/\/127\.0\.0\.1:\d+ \(max_batch_size 2, max_seq_len 48, /,
      );
      const n = await serve(["--device", "cuda", "--no-warmup"]);
      await n.stop();
      expect(hooks.warmups).toBe(1);
      expect(n.io.stdout).toMatch(/^tsllm-serve: "engine" on /);
      expect(hooks.opened[1]).toEqual({
        dir: engine,
        device: "cuda",
        policy: "guaranteed_no_evict",
        maxBatchSize: undefined,
        maxNumTokens: undefined,
        maxSeqLen: undefined,
        kvCacheFreeGpuMemFraction: undefined,
        fp8ContextFmha: "auto",
        verify: true,
      });
    } finally {
      hooks.cuda = false;
    }
  });

  it("a bad flag value is commander's one-line usage error and exit 1, before anything loads", async () => {
    for (const [flag, v, line] of [
      [
        "--port",
        "65536",
        "error: option '--port <n>' argument '65536' is invalid. Allowed: --port in [0, 65535].",
      ],
      ["--port", "-1", "error: option '--port <n>' argument '-1' is invalid. Allowed: --port in [0, 65535]."],
      [
        "--max-queue",
        "0",
        "error: option '--max-queue <n>' argument '0' is invalid. Allowed: --max-queue ≥ 1.",
      ],
      [
        "--drain-timeout",
        "-0.5",
        "error: option '--drain-timeout <s>' argument '-0.5' is invalid. Allowed: --drain-timeout ≥ 0.",
      ],
      ["--api-key", " ", "error: option '--api-key <key>' argument ' ' is invalid. --api-key is empty"],
      // `--host "$HOST"` with HOST unset listened on every interface instead of the default 127.0.0.1.
      ["--host", "", "error: option '--host <host>' argument '' is invalid. --host is empty"],
      [
        "--served-model-name",
        "",
        "error: option '--served-model-name <name>' argument '' is invalid. --served-model-name is empty",
      ],
      [
        "--device",
        "gpu",
        "error: option '--device <d>' argument 'gpu' is invalid. Allowed choices are cpu, cuda, auto.",
      ],
      [
        "--scheduler-policy",
        "fifo",
        "error: option '--scheduler-policy <p>' argument 'fifo' is invalid. Allowed choices are guaranteed_no_evict, max_utilization.",
      ],
      // vLLM's CORS flags take JSON lists.
      [
        "--allowed-origins",
        "https://a.example",
        `error: option '--allowed-origins <json>' argument 'https://a.example' is invalid. --allowed-origins must be a JSON list of strings (e.g. '["*"]'), got https://a.example`,
      ],
      [
        "--allowed-headers",
        '"*"',
        `error: option '--allowed-headers <json>' argument '"*"' is invalid. --allowed-headers must be a JSON list of strings (e.g. '["*"]'), got "*"`,
      ],
    ]) {
      const exit = vi.spyOn(process, "exit").mockImplementation((code?: string | number | null) => {
        throw new Error(`exit ${code}`);
      });
      const c = capture();
      const e = await tsllmServe([process.execPath, "tsllm-serve", "/nonexistent-engine", flag, v]).then(
        () => null,
        (e: unknown) => e,
      );
      c.restore();
      exit.mockRestore();
      expect((e as Error)?.message, `${flag} ${v}`).toBe("exit 1");
      expect(c.io.stdout).toBe("");
      expect(c.io.stderr.split("\n")[0]).toBe(line);
    }
  });

  it("--help describes the command and every flag", async () => {
    const exit = vi.spyOn(process, "exit").mockImplementation((code?: string | number | null) => {
      throw new Error(`exit ${code}`);
    });
    const c = capture();
    await tsllmServe([process.execPath, "tsllm-serve", "--help"]).catch(() => {});
    c.restore();
    exit.mockRestore();
    const help = c.io.stdout.replace(/\s+/g, " ");
    for (const s of [
      "Usage: tsllm-serve [options] <engine>",
      "Serve an engine over HTTP, OpenAI-compatible: POST /v1/completions, /v1/chat/completions (stream or not), " +
        "GET /v1/models, /health, /metrics (Prometheus). SIGTERM stops accepting, lets running requests finish " +
        "(up to --drain-timeout), then exits.",
      "engine engine directory written by tsllm-compile",
      '--host <host> address to listen on (default: "127.0.0.1")',
      "--port <n> port (0 = any free one) (default: 8000)",
      '--device <d> cpu (reference executor) or cuda (native runtime) (choices: "cpu", "cuda", "auto", default: "auto")',
      "--served-model-name <name> model name clients use (default: the engine directory's name)",
      "--api-key <key> require Authorization: Bearer <key> on /v1/* (default: $TSLLM_API_KEY)",
      "--max-queue <n> requests allowed to wait; more get HTTP 429 (default: 4096)",
      "--drain-timeout <s> seconds running requests may take to finish after SIGTERM (default: 30)",
      '--allowed-origins <json> CORS: origins browsers may call from, a JSON list (["*"]: any) (default: ["*"])',
      '--allowed-methods <json> CORS: methods a preflight allows, a JSON list (default: ["*"])',
      '--allowed-headers <json> CORS: request headers a preflight allows, a JSON list (default: ["*"])',
      "--allow-credentials CORS: allow credentials (Access-Control-Allow-Credentials: true)",
      '--scheduler-policy <p> batch admission policy (choices: "guaranteed_no_evict", "max_utilization", default: "guaranteed_no_evict")',
      "--no-verify skip the engine content-hash check (large engines)",
      "--no-warmup cuda: start listening without first running batches 1-4 and the decode graph sizes up to " +
        "--max-batch-size once (CUDA graph captures and kernel tuning then fall on the first requests)",
    ])
      expect(help).toContain(s);
  });
});
