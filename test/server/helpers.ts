// An in-process tsllm-serve on a tiny engine (CPU reference executor, localhost, a free port), the
// official openai client pointed at it, and a generation oracle independent of the server.
import { execFile } from "node:child_process";
import * as path from "node:path";
import OpenAI from "openai";
import { generate } from "../../src/executor/generate.ts";
import { ReferenceExecutor } from "../../src/executor/reference.ts";
import { buildServer, type ServeOptions, type Server } from "../../src/server/app.ts";
import { type OpenBatchOptions, openBatchManager } from "../../src/serving/open.ts";
import { findTokenizer } from "../../src/text/engine-files.ts";
import { REPO } from "../fixtures.ts";

export interface TestServer {
  url: string;
  client: OpenAI;
  manager: Awaited<ReturnType<typeof openBatchManager>>;
  /** The app itself (stopAccepting, metrics). */
  server: Server;
  close(): Promise<void>;
}

export async function startServer(
  engine: string,
  o: Partial<ServeOptions> & { batch?: OpenBatchOptions } = {},
): Promise<TestServer> {
  const manager = await openBatchManager(engine, { device: "cpu", ...o.batch });
  const found = findTokenizer(engine);
  const server = buildServer({
    manager,
    tokenizer: found.tok,
    noTokenizer: found.tok ? undefined : found.why,
    modelName: "tiny",
    ...o,
  });
  const url = await server.app.listen({ host: "127.0.0.1", port: 0 });
  const client = new OpenAI({
    baseURL: `${url}/v1`,
    apiKey: o.apiKey ?? "none",
    maxRetries: 0,
    timeout: 120_000,
  });
  return {
    url,
    client,
    manager,
    server,
    close: async () => {
      await server.app.close();
      await manager.shutdown();
    },
  };
}

/** Greedy tokens by the executor's own batch generate loop (not the batch manager, not the server). */
export function greedyOracle(
  engine: string,
  prompt: number[],
  maxNewTokens: number,
  eos: number[],
): number[] {
  const ex = ReferenceExecutor.load(engine, { verify: false });
  try {
    return generate(ex, [prompt], { maxNewTokens, eosTokenIds: eos })[0];
  } finally {
    ex.close();
  }
}

/** Prometheus text → value of one sample (labels as written, e.g. 'x{a="b"}'). */
/** Waits (up to 4 s) until the server's batch manager has nothing running, queued or paused. */
export async function waitIdle(s: TestServer): Promise<void> {
  for (let t = 0; t < 400; t++) {
    const st = s.manager.stats();
    if (st.running === 0 && st.queued === 0 && st.paused === 0) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("the manager did not go idle");
}

export function metric(text: string, name: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1));
}

/**
 * Runs a bin asynchronously: a synchronous spawn would block this worker's event loop (an in-process
 * server, and vitest's own RPC, which times out under load). Through node, not the file's executable bit
 * (Stryker's sandbox copies bin/ without it).
 */
export function runBin(
  bin: string,
  args: string[],
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((res) =>
    execFile(process.execPath, [bin, ...args], { encoding: "utf8" }, (e, stdout, stderr) =>
      res({ status: e ? (typeof e.code === "number" ? e.code : 1) : 0, stdout, stderr }),
    ),
  );
}

/** `tsllm-run ENGINE --device cpu --json ARGS...` as a child process: its JSON (a non-zero exit throws its stderr). */
export async function tsllmRunJson<T = unknown>(engine: string, args: string[]): Promise<T> {
  const r = await runBin(path.join(REPO, "bin/tsllm-run.mjs"), [
    engine,
    "--device",
    "cpu",
    "--json",
    ...args,
  ]);
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout);
}
