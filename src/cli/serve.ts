// tsllm-serve: an OpenAI-compatible HTTP server for an engine (src/server/app.ts) over the batch manager.
import * as path from "node:path";
import { InvalidArgumentError, Option } from "commander";
import { buildServer } from "../server/app.ts";
import { DEFAULT_CORS } from "../server/cors.ts";
import { describeWarmup } from "../serving/batch-manager.ts";
import { openBatchManager } from "../serving/open.ts";
import { findTokenizer } from "../text/engine-files.ts";
import {
  command,
  float,
  fp8ContextFmhaOption,
  int,
  kvFractionOption,
  limitOption,
  main,
  nonEmpty,
  schedulerPolicyOption,
} from "./common.ts";

const program = command(
  "tsllm-serve",
  "Serve an engine over HTTP, OpenAI-compatible: POST /v1/completions, /v1/chat/completions (stream or not), " +
    "GET /v1/models, /health, /metrics (Prometheus). SIGTERM stops accepting, lets running requests finish " +
    "(up to --drain-timeout), then exits.",
)
  .argument("<engine>", "engine directory written by tsllm-compile")
  // "" (`--host "$HOST"` with HOST unset) listened on every interface, not on the default 127.0.0.1.
  .option("--host <host>", "address to listen on", nonEmpty("--host"), "127.0.0.1")
  .option("--port <n>", "port (0 = any free one)", int("--port", { min: 0, max: 65535 }), 8000)
  .addOption(
    new Option("--device <d>", "cpu (reference executor) or cuda (native runtime)")
      .choices(["cpu", "cuda", "auto"])
      .default("auto"),
  )
  .option(
    "--served-model-name <name>",
    "model name clients use (default: the engine directory's name)",
    nonEmpty("--served-model-name"),
  )
  .option(
    "--api-key <key>",
    "require Authorization: Bearer <key> on /v1/* (default: $TSLLM_API_KEY)",
    nonEmpty("--api-key"),
  )
  // vLLM's CORS flags, JSON lists as there (its json.loads); their defaults and why: src/server/cors.ts.
  .option(
    "--allowed-origins <json>",
    'CORS: origins browsers may call from, a JSON list (["*"]: any)',
    jsonStrings("--allowed-origins"),
    DEFAULT_CORS.allowedOrigins,
  )
  .option(
    "--allowed-methods <json>",
    "CORS: methods a preflight allows, a JSON list",
    jsonStrings("--allowed-methods"),
    DEFAULT_CORS.allowedMethods,
  )
  .option(
    "--allowed-headers <json>",
    "CORS: request headers a preflight allows, a JSON list",
    jsonStrings("--allowed-headers"),
    DEFAULT_CORS.allowedHeaders,
  )
  .option("--allow-credentials", "CORS: allow credentials (Access-Control-Allow-Credentials: true)")
  .option(
    "--max-queue <n>",
    "requests allowed to wait; more get HTTP 429",
    // A request waits in the queue before it runs: 0 would refuse every request.
    int("--max-queue", { min: 1 }),
    4096,
  )
  .option(
    "--drain-timeout <s>",
    "seconds running requests may take to finish after SIGTERM",
    float("--drain-timeout", { min: 0 }),
    30,
  )
  .addOption(schedulerPolicyOption())
  .addOption(limitOption("--max-batch-size"))
  .addOption(limitOption("--max-num-tokens"))
  .addOption(limitOption("--max-seq-len"))
  .addOption(kvFractionOption())
  .addOption(fp8ContextFmhaOption())
  .option("--no-verify", "skip the engine content-hash check (large engines)")
  .option(
    "--no-warmup",
    "cuda: start listening without first running batches 1-4 and the decode graph sizes up to --max-batch-size once " +
      "(CUDA graph captures and kernel tuning then fall on the first requests)",
  );

/** Parser of a flag that takes a JSON list of strings, as vLLM's --allowed-origins (`'["https://a.example"]'`). */
function jsonStrings(name: string) {
  return (v: string): string[] => {
    let x: unknown;
    try {
      x = JSON.parse(v);
    } catch {
      x = undefined;
    }
    if (!Array.isArray(x) || !x.every((s) => typeof s === "string"))
      throw new InvalidArgumentError(`${name} must be a JSON list of strings (e.g. '["*"]'), got ${v}`);
    return x;
  };
}

/**
 * tsllm-serve on `argv` (laid out as process.argv), exported so that tests run it in-process: it serves until
 * SIGTERM or SIGINT, or until `stop` aborts (the abort's reason, a string, is named where a signal's name is).
 */
export async function tsllmServe(argv: readonly string[], stop?: AbortSignal): Promise<void> {
  program.parse(argv);
  const [dir] = program.args;
  const o = program.opts();
  const found = findTokenizer(dir);
  const manager = await openBatchManager(dir, {
    device: o.device,
    policy: o.schedulerPolicy,
    maxBatchSize: o.maxBatchSize,
    maxNumTokens: o.maxNumTokens,
    maxSeqLen: o.maxSeqLen,
    kvCacheFreeGpuMemFraction: o.kvCacheFreeGpuMemFraction,
    fp8ContextFmha: o.fp8ContextFmha,
    verify: o.verify,
  });
  // Before listening: the first requests would otherwise pay for the runtime's graph captures and kernel tuning
  // (the reference executor has neither).
  if (o.warmup && manager.backendInfo.device === "cuda") {
    const w = await manager.warmup();
    process.stdout.write(`tsllm-serve: warm-up (CUDA graphs, kernel tuning): ${describeWarmup(w)}\n`);
  }
  const modelName = o.servedModelName ?? path.basename(path.resolve(dir));
  const server = buildServer({
    manager,
    tokenizer: found.tok,
    noTokenizer: found.tok ? undefined : found.why,
    modelName,
    maxQueue: o.maxQueue,
    apiKey: o.apiKey ?? process.env.TSLLM_API_KEY,
    modelPath: dir,
    cors: {
      allowedOrigins: o.allowedOrigins,
      allowedMethods: o.allowedMethods,
      allowedHeaders: o.allowedHeaders,
      allowCredentials: o.allowCredentials ?? false,
    },
  });
  const address = await server.app.listen({ host: o.host, port: o.port });
  const l = manager.limits;
  process.stdout.write(
    `tsllm-serve: "${modelName}" on ${address} (max_batch_size ${l.maxBatchSize}, max_seq_len ${l.maxSeqLen}, ` +
      `${l.kvBlocksTotal} KV blocks of ${l.tokensPerBlock} tokens)${found.tok ? "" : `; ${found.why}`}\n`,
  );
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => {
    stopped = resolve;
  });
  let draining = false;
  let managerDown = false;
  const drain = async (signal: string) => {
    if (draining) {
      // A second signal (Ctrl+C again, as uvicorn's force exit) stops waiting for the running requests: they are
      // cancelled now (finish_reason "abort") and the first drain completes. Before, with `once` listeners, a
      // second SIGINT killed the process mid-stream (connections cut, no [DONE]) and SIGINT after SIGTERM ran a
      // second drain that waited as long as the first.
      // (Once the manager has shut down there is nothing left to cancel, and it must not be restarted.)
      if (managerDown) return;
      process.stdout.write(`tsllm-serve: ${signal} again: cancelling running requests\n`);
      await manager.shutdown({ drainTimeoutMs: 0 });
      return;
    }
    draining = true;
    process.stdout.write(
      `tsllm-serve: ${signal}: not accepting new requests, draining (up to ${o.drainTimeout} s)\n`,
    );
    server.stopAccepting();
    // Stop listening, let running requests finish (bounded), then close the remaining connections.
    const closed = server.app.close();
    await manager.shutdown({ drainTimeoutMs: o.drainTimeout * 1000 });
    managerDown = true;
    await closed;
    stopped();
  };
  const onTerm = () => void drain("SIGTERM");
  const onInt = () => void drain("SIGINT");
  // `on`, not `once`: a repeated signal must reach drain (above) rather than the default action or nothing.
  process.on("SIGTERM", onTerm);
  process.on("SIGINT", onInt);
  if (stop?.aborted) void drain(String(stop.reason));
  else stop?.addEventListener("abort", () => void drain(String(stop.reason)));
  await done;
  // (The command exits next; in-process, the server's signal listeners must not outlive it.)
  process.off("SIGTERM", onTerm);
  process.off("SIGINT", onInt);
  process.stdout.write("tsllm-serve: stopped\n");
}

await main(() => tsllmServe(process.argv));
// Exit now rather than when the last timer or worker thread lets go (the drain timeout's timer would
// hold the process for its full length).
process.exit();
