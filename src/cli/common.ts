// Shared CLI plumbing: one-line errors and a non-zero exit, never a stack trace for user mistakes.
import * as fs from "node:fs";
import tty from "node:tty";
import { Command, InvalidArgumentError, Option } from "commander";
import { SEED_RANGE, seedProblem } from "../executor/seed.ts";
import { type BatchManager, SCHEDULER_POLICIES } from "../serving/types.ts";
import { endProgressBars } from "./progress.ts";

export const VERSION: string = JSON.parse(
  fs.readFileSync(new URL("../../package.json", import.meta.url), "utf8"),
).version;

/**
 * A tsllm command: `--version`, a usage error as one line plus a `--help` hint (not the whole help),
 * descriptions wrapped by commander to the terminal width (so write them without newlines).
 */
export function command(name: string, description: string): Command {
  return new Command(name)
    .description(description)
    .version(VERSION, "-V, --version", "print the tsllm version")
    .showHelpAfterError(`(${name} --help lists the flags)`);
}

/**
 * A reader of `stream` that goes away (`tsllm-inspect ENGINE | head`, `tsllm-compile … | head`) is not an error, and
 * it does not end the command: what stdout and stderr carry is a report, logs or progress, while a command's own
 * products (an engine folder, a --json or --output file, a server) must still be finished, never left half-written.
 * (Exiting there made `tsllm-compile … | tail -0` exit 0 with no engine and its temporary folder left behind.) So
 * from the first EPIPE on, writes to the stream are dropped and the command runs to its end with its own exit code.
 * Any other error of the stream (`… > file` on a full disk: ENOSPC) is said in one line (on stderr, unless stderr is
 * what failed) and makes the exit code 1; the command goes on as after an EPIPE. It was thrown from this listener:
 * a stack trace, and the command ended wherever it was.
 */
export function dropWritesWhenReaderGone(stream: NodeJS.WritableStream, name: string): void {
  let failed = false;
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code !== "EPIPE" && e.code !== "ERR_STREAM_DESTROYED" && !failed) {
      failed = true;
      process.exitCode = 1;
      if (stream !== process.stderr) process.stderr.write(`error: ${name}: ${e.message}\n`);
    }
    stream.write = ((...args: unknown[]) => {
      const done = args.find((a) => typeof a === "function") as (() => void) | undefined;
      if (done) process.nextTick(done);
      return true;
    }) as typeof stream.write;
  });
}

/**
 * stdout is what tsllm-run makes: once it cannot be written (its reader gone, `tsllm-run … | head -c 20`; a full
 * disk, `> file` on ENOSPC), nothing generated from then on can be read, so the requests are cancelled (the batch
 * manager shuts down) instead of running to their end into a stream that drops it, and the command ends as after
 * its last line. (main() has stdout drop its writes from that error on, and says a failure other than EPIPE with exit
 * code 1; on ENOSPC generation went on to its end.) Returns the listener's removal.
 */
export function cancelWhenReaderGone(
  bm: Pick<BatchManager, "shutdown">,
  stdout: NodeJS.WritableStream,
): () => void {
  const gone = () => void bm.shutdown();
  stdout.on("error", gone);
  return () => stdout.off("error", gone);
}

/**
 * Writes `parts` to `out` (stdout) one after the other, each once `out` has taken the one before, and stops once its
 * reader is gone. process.stdout queues in memory what a pipe cannot take yet: `prepare-dataset` of 1M requests
 * piped to a slower reader held all of it (2 GB) where datasetParts promises the memory of one part; and after
 * `prepare-dataset … | head -1` every remaining part was still drawn into the closed pipe (24 s for 3M requests).
 * (It yields between parts, so that the EPIPE, which the stream reports on a later tick, is seen.)
 */
export async function writeParts(out: NodeJS.WritableStream, parts: Iterable<string>): Promise<void> {
  let gone = false;
  const onError = () => {
    gone = true;
  };
  out.on("error", onError);
  try {
    for (const part of parts) {
      if (gone) return;
      const taken = out.write(part);
      await new Promise<void>((resolve) => {
        if (taken) return void setImmediate(resolve);
        // (A stream that errs or closes instead never drains.)
        const done = () => {
          for (const ev of ["drain", "error", "close"]) out.off(ev, done);
          resolve();
        };
        for (const ev of ["drain", "error", "close"]) out.on(ev, done);
      });
    }
  } finally {
    out.off("error", onError);
  }
}

export async function main(fn: () => Promise<void>): Promise<void> {
  dropWritesWhenReaderGone(process.stdout, "stdout");
  dropWritesWhenReaderGone(process.stderr, "stderr");
  try {
    await fn();
  } catch (e) {
    // Before the error line: a bar left drawn would clear it, and its redraw timer would keep the process alive.
    endProgressBars();
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`error: ${msg.split("\n")[0]}\n`);
    if (process.env.TSLLM_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  } finally {
    endProgressBars();
  }
}

/**
 * Whether stdin is a terminal, asked of the descriptor: `process.stdin.isTTY` creates process.stdin, which turns a
 * piped stdin non-blocking, and the whole-stdin read that follows (fs.readFileSync(0)) then failed with EAGAIN
 * whenever the writer had not written it all yet (`slow-producer | tsllm-bench throughput ENGINE`).
 */
export function stdinIsTerminal(): boolean {
  return tty.isatty(0);
}

/** Allowed range of a numeric flag; `above` is an exclusive lower bound. */
export interface Range {
  min?: number;
  above?: number;
  max?: number;
}

function rangeText(r: Range): string {
  const lo = r.above !== undefined ? `> ${r.above}` : r.min !== undefined ? `≥ ${r.min}` : "";
  if (r.max === undefined) return lo;
  if (!lo) return `≤ ${r.max}`;
  return `in ${r.above !== undefined ? `(${r.above}` : `[${r.min}`}, ${r.max}]`;
}

function checkRange(name: string, n: number, r: Range): number {
  if (
    (r.min !== undefined && n < r.min) ||
    (r.above !== undefined && n <= r.above) ||
    (r.max !== undefined && n > r.max)
  )
    throw new InvalidArgumentError(`Allowed: ${name} ${rangeText(r)}.`);
  return n;
}

/** Parser of an integer flag, checked against `range` when commander reads it (before any work). */
export function int(name: string, range: Range = {}) {
  return (v: string): number => {
    // Past 2^53 - 1 a number is no longer the integer given ("99999999999999999999" read as 1e20, then "Invalid array
    // length" from --num-requests, naming no flag).
    if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be an integer, got "${v}"`);
    // (The seeds' range, SEED_RANGE, is that of every integer a number holds exactly.)
    if (!Number.isSafeInteger(Number(v)))
      throw new InvalidArgumentError(`${name} must be ${SEED_RANGE}, got "${v}"`);
    return checkRange(name, Number(v), range);
  };
}

/**
 * The seeds of the benchmarks' random datasets and arrival times: numpy's (np.random.seed, which TensorRT-LLM's
 * prepare_dataset.py and vLLM's benchmarks seed) 0 to 2^32 - 1; past it two seeds made one dataset (seed >>> 0).
 */
export const NUMPY_SEED: Range = { min: 0, max: 2 ** 32 - 1 };

/** Parser of a sampling seed flag: an integer the samplers honour exactly (src/executor/seed.ts), else refused. */
export function seedArg(name: string) {
  return (v: string): number => {
    const n = int(name)(v);
    if (seedProblem(n)) throw new InvalidArgumentError(`${name} must be ${SEED_RANGE}, got "${v}"`);
    return n;
  };
}

/** Parser of a text flag that must say something: `--api-key "$KEY"` with KEY unset would turn the key check off. */
export function nonEmpty(name: string) {
  return (v: string): string => {
    if (v.trim() === "") throw new InvalidArgumentError(`${name} is empty`);
    return v;
  };
}

/** Parser of a number flag, checked against `range` when commander reads it (before any work). */
export function float(name: string, range: Range = {}) {
  return (v: string): number => {
    const n = v.trim() === "" ? Number.NaN : Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got "${v}"`);
    return checkRange(name, n, range);
  };
}

/** What each runtime limit bounds; engines run under their own limits unless one is given (larger re-plans the arena). */
const LIMITS = {
  "--max-batch-size": "sequences in one step",
  "--max-num-tokens": "tokens in one step",
  "--max-seq-len": "tokens of one sequence",
} as const;

/** A runtime-limit flag, declared once for every command that runs an engine (run, serve, bench throughput). */
export function limitOption(flag: keyof typeof LIMITS): Option {
  return new Option(`${flag} <n>`, `runtime limit on ${LIMITS[flag]} (default: the engine's)`).argParser(
    int(flag, { min: 1 }),
  );
}

/** --fp8-context-fmha auto|on|off (CudaLoadOptions.fp8ContextFmha), for every command that runs an engine on the GPU. */
export function fp8ContextFmhaOption(): Option {
  return new Option(
    "--fp8-context-fmha <mode>",
    "prompt (context) attention over an FP8 KV cache with Q and the softmax weights in FP8 on the tensor cores: " +
      "auto = off for now (on the H200 it is slower than the fp16/bf16 kernel: 0.63-0.77x), on for every FP8 KV " +
      "cache, off never. It runs " +
      "on sm 89+ GPUs for head dims that are multiples of 16 up to 128; elsewhere, and for engines without an FP8 " +
      "KV cache, the fp16/bf16 kernel runs whatever the mode",
  )
    .choices(["auto", "on", "off"])
    .default("auto");
}

/** The KV-cache share of free GPU memory, for every command that loads an engine on the GPU. */
export function kvFractionOption(): Option {
  return new Option(
    "--kv-cache-free-gpu-mem-fraction <x>",
    "share of free GPU memory for the KV cache (default 0.9)",
  ).argParser(float("--kv-cache-free-gpu-mem-fraction", { above: 0, max: 1 }));
}

/** --scheduler-policy, for every command that runs the batch manager (default guaranteed_no_evict, as trtllm-bench). */
export function schedulerPolicyOption(): Option {
  return new Option("--scheduler-policy <p>", "batch admission policy")
    .choices(SCHEDULER_POLICIES)
    .default("guaranteed_no_evict");
}

export function list(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(",").filter(Boolean)];
}

/** "1,2,3" → [1, 2, 3]; names the flag and the bad entry otherwise. */
export function parseIds(s: string, flag: string): number[] {
  return s.split(",").map((t) => {
    if (!/^\d+$/.test(t.trim())) throw new Error(`${flag}: "${t}" is not a token id`);
    return Number(t);
  });
}
