// The CLIs as processes, where a terminal or a pipe changes what they do: a progress bar drawn on a terminal (stderr
// made to look like one by a preloaded module: cli-progress asks only isTTY and columns) is taken down when the
// command fails or is interrupted, and stdin read whole from a pipe whose writer is slower than the reader.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { buildFixture, corruptLastWeightByte, REPO, tmpDir } from "./fixtures.ts";

const RUN = path.join(REPO, "bin/tsllm-run.mjs");
const BENCH = path.join(REPO, "bin/tsllm-bench.mjs");
const HIDE = "\u001b[?25l";
const SHOW = "\u001b[?25h";

let dir: string;
let preload: { tty: string; stdinRead: string };

beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 256, maxNumTokens: 64, tokensPerBlock: 8 });
  const box = tmpDir();
  const tty = path.join(box, "stderr-tty.mjs");
  fs.writeFileSync(tty, "process.stderr.isTTY = true;\nprocess.stderr.columns = 200;\n");
  // Says on stderr when the whole-stdin read starts, so that a test writes stdin only once the reader waits for it.
  const stdinRead = path.join(box, "stdin-read.mjs");
  fs.writeFileSync(
    stdinRead,
    'import fs from "node:fs";\nimport { syncBuiltinESMExports } from "node:module";\n' +
      "const read = fs.readFileSync;\n" +
      'fs.readFileSync = (p, ...rest) => {\n  if (p === 0) fs.writeSync(2, "(reading stdin)\\n");\n' +
      "  return read(p, ...rest);\n};\nsyncBuiltinESMExports();\n",
  );
  preload = { tty: pathToFileURL(tty).href, stdinRead: pathToFileURL(stdinRead).href };
});

interface Child {
  child: ChildProcessWithoutNullStreams;
  stderr: () => string;
  stdout: () => string;
  /** Resolves once stderr holds `text`. */
  waitFor: (text: string) => Promise<void>;
  exited: Promise<{ code: number | null; signal: string | null }>;
}

function start(bin: string, preloads: string[], args: string[]): Child {
  const child = spawn(process.execPath, [...preloads.flatMap((p) => ["--import", p]), bin, ...args]);
  let stderr = "";
  let stdout = "";
  const waiting: { text: string; resolve: () => void }[] = [];
  child.stdout.on("data", (d) => {
    stdout += d;
  });
  child.stderr.on("data", (d) => {
    stderr += d;
    for (const w of waiting.filter((x) => stderr.includes(x.text))) {
      waiting.splice(waiting.indexOf(w), 1);
      w.resolve();
    }
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>((res) =>
    child.on("close", (code, signal) => res({ code, signal })),
  );
  return {
    child,
    stderr: () => stderr,
    stdout: () => stdout,
    waitFor: (text) =>
      stderr.includes(text) ? Promise.resolve() : new Promise((resolve) => waiting.push({ text, resolve })),
    exited,
  };
}

/** The exit, or "still running" (the child killed) when it has not come `seconds` after it was asked for. */
async function exitWithin(c: Child, seconds: number) {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"still running">((res) => {
    timer = setTimeout(() => res("still running"), seconds * 1000);
  });
  const r = await Promise.race([c.exited, late]);
  clearTimeout(timer);
  if (r === "still running") c.child.kill("SIGKILL");
  return r;
}

describe("a progress bar on a terminal", () => {
  // The bar's redraw timer kept the process alive for ever after its error line: `tsllm-run ENGINE --verbose` on a
  // corrupt rank file printed the error, then hung on a terminal with the cursor hidden.
  it("is taken down when the command fails: the cursor shown, the error line last, the process ended", async () => {
    const bad = path.join(tmpDir(), "engine");
    fs.cpSync(dir, bad, { recursive: true });
    corruptLastWeightByte(bad, "rank0.engine");
    const c = start(RUN, [preload.tty], [bad, "--device", "cpu", "--verbose", "--input-ids", "1,2"]);
    await c.waitFor("error: ");
    expect(await exitWithin(c, 30), c.stderr()).toEqual({ code: 1, signal: null });
    const err = c.stderr();
    expect(err).toContain("load ["); // the bar was drawn
    expect(err.lastIndexOf(SHOW)).toBeGreaterThan(err.lastIndexOf(HIDE));
    expect(err.slice(err.lastIndexOf(SHOW))).toMatch(/error: .*rank0\.engine: content hash .*\n$/);
    expect(c.stdout()).toBe("");
  }, 60_000);

  // Ctrl-C ended the process by the signal's default action with the bar drawn: the terminal was left without a cursor.
  it("is taken down by SIGINT, which then ends the process as it would have", async () => {
    // 32 prompts of 250 new tokens (about 8,000 tokens): generating takes seconds; the signal comes at the bar's start.
    const prompts = Array.from({ length: 32 }, (_, i) => ["--input-ids", `${i},3,0`]).flat();
    const c = start(
      RUN,
      [preload.tty],
      [dir, "--device", "cpu", "--verbose", "--ignore-eos", "--max-new-tokens", "250", ...prompts],
    );
    await c.waitFor("generate [");
    c.child.kill("SIGINT");
    expect(await exitWithin(c, 30), c.stderr()).toEqual({ code: null, signal: "SIGINT" });
    const err = c.stderr();
    expect(err.lastIndexOf(SHOW)).toBeGreaterThan(err.lastIndexOf(HIDE));
    expect(err).not.toMatch(/error|at .*\.ts:\d+/);
  }, 60_000);
});

describe("stdin from a pipe whose writer is slower than the reader", () => {
  // process.stdin.isTTY (asked to refuse a terminal) made the piped stdin non-blocking, and the whole-stdin read then
  // failed at once: "error: <stdin>: cannot read the dataset (EAGAIN)", "error: EAGAIN: resource temporarily
  // unavailable, read" (tsllm-run --chat).
  const cases: [string, string, string[], string, RegExp][] = [
    [
      "tsllm-bench throughput without --dataset",
      BENCH,
      ["throughput", "ENGINE", "--device", "cpu", "--warmup", "0"],
      `${JSON.stringify({ task_id: 0, input_ids: [1, 2], output_tokens: 2 })}\n`,
      /^ +requests +1 \(length 1\)$/m,
    ],
    [
      "tsllm-run --chat",
      RUN,
      ["ENGINE", "--device", "cpu", "--chat", "--max-new-tokens", "2", "--ignore-eos", "--json"],
      JSON.stringify([{ role: "user", content: "hi" }]),
      /^\{"prompt_ids":\[507,.*"finish_reason":"length"/,
    ],
  ];
  for (const [name, bin, args, input, out] of cases)
    it(`${name} reads it whole`, async () => {
      const c = start(
        bin,
        [preload.stdinRead],
        args.map((a) => (a === "ENGINE" ? dir : a)),
      );
      await c.waitFor("(reading stdin)\n");
      // A moment later, so that the read has surely begun on an empty pipe (the old failure came at once); read
      // right, the input is read whenever it comes.
      await new Promise((r) => setTimeout(r, 300));
      c.child.stdin.end(input);
      expect(await exitWithin(c, 60), c.stderr()).toEqual({ code: 0, signal: null });
      expect(c.stdout()).toMatch(out);
    }, 90_000);
});

describe("stdout that cannot be written", () => {
  // The write's error was thrown from main()'s stream listener: a stack trace.
  const full = fs.statSync("/dev/full", { throwIfNoEntry: false })?.isCharacterDevice();
  it.skipIf(!full)(
    "on a full disk (/dev/full): one line naming stdout, exit code 1, no stack trace",
    async () => {
      const fd = fs.openSync("/dev/full", "w");
      try {
        const child = spawn(process.execPath, [path.join(REPO, "bin/tsllm-inspect.mjs"), dir], {
          stdio: ["ignore", fd, "pipe"],
        });
        let stderr = "";
        child.stderr?.on("data", (d) => {
          stderr += d;
        });
        const code = await new Promise((res) => child.on("close", res));
        expect(stderr).toBe("error: stdout: ENOSPC: no space left on device, write\n");
        expect(code).toBe(1);
      } finally {
        fs.closeSync(fd);
      }
    },
    60_000,
  );
});
