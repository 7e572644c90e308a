// tsllm-serve as a process: it says where it listens, serves, and on SIGTERM stops accepting, lets the
// running stream finish, then exits 0.
import { spawn } from "node:child_process";
import * as path from "node:path";
import OpenAI from "openai";
import { describe, expect, it } from "vitest";
import { buildFixture, REPO } from "../fixtures.ts";
import { runBin } from "./helpers.ts";

/**
 * tsllm-serve ENGINE --device cpu --port 0 EXTRA as a child process, its stdout and stderr together in out(), until
 * it says where it listens: that URL, an openai client on it, and its exit code once it exits.
 */
async function serveProcess(engine: string, extra: string[]) {
  const proc = spawn(
    process.execPath,
    [path.join(REPO, "bin/tsllm-serve.mjs"), engine, "--device", "cpu", "--port", "0", ...extra],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  proc.stdout.on("data", (d) => {
    out += d;
  });
  proc.stderr.on("data", (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((res) => proc.on("exit", (code) => res(code)));
  for (let t = 0; t < 300 && !/ on http:\/\/\S+/.test(out); t++) await new Promise((r) => setTimeout(r, 50));
  const url = / on (http:\/\/\S+) /.exec(out)?.[1];
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0 });
  return { proc, url, client, exited, out: () => out };
}

describe("tsllm-serve (process)", () => {
  it("SIGTERM: the running stream completes, new requests are refused, exit 0", async () => {
    const { proc, url, client, exited, out } = await serveProcess(await buildFixture("llama"), [
      "--served-model-name",
      "tiny",
    ]);
    try {
      expect(url, out()).toBeDefined();
      const stream = await client.completions.create({
        model: "tiny",
        prompt: [507, 1, 2],
        max_tokens: 40,
        temperature: 0,
        stream: true,
        ignore_eos: true,
        return_token_ids: true,
      } as never);
      let n = 0;
      let finish: string | null = null;
      for await (const ch of stream as unknown as AsyncIterable<{
        choices: { token_ids?: number[]; finish_reason: string | null }[];
      }>) {
        n += ch.choices[0]?.token_ids?.length ?? 0;
        finish = ch.choices[0]?.finish_reason ?? finish;
        if (n === 2) {
          proc.kill("SIGTERM");
          // Give the server a moment to act on the signal, then check it refuses new work.
          await new Promise((r) => setTimeout(r, 100));
          const late = await fetch(`${url}/v1/models`).then(
            (r) => r.status,
            () => "refused",
          );
          expect([503, "refused"]).toContain(late);
        }
      }
      expect(n).toBe(40);
      expect(finish).toBe("length");
      expect(await exited).toBe(0);
      expect(out()).toMatch(/SIGTERM: not accepting new requests, draining/);
      expect(out()).toMatch(/tsllm-serve: stopped/);
    } finally {
      proc.kill("SIGKILL");
    }
  });

  it("a second SIGINT while draining cancels the running streams (finish_reason abort), exit 0", async () => {
    // Before, the second Ctrl+C met no listener: the process died mid-stream (the client's socket closed, no
    // [DONE], no exit code 0).
    const { proc, url, client, exited, out } = await serveProcess(await buildFixture("llama"), [
      "--drain-timeout",
      "60",
    ]);
    try {
      expect(url, out()).toBeDefined();
      const models = await client.models.list();
      const stream = await client.completions.create({
        model: models.data[0].id,
        prompt: [507, 1, 2],
        max_tokens: 250,
        n: 8,
        temperature: 0,
        stream: true,
        ignore_eos: true,
      } as never);
      const finish: string[] = [];
      let signalled = false;
      for await (const ch of stream as unknown as AsyncIterable<{
        choices: { finish_reason: string | null }[];
      }>) {
        for (const c of ch.choices) if (c.finish_reason) finish.push(c.finish_reason);
        if (!signalled) {
          signalled = true;
          proc.kill("SIGINT");
          await new Promise((r) => setTimeout(r, 20));
          proc.kill("SIGINT");
        }
      }
      expect(finish).toEqual(Array(8).fill("abort"));
      expect(await exited).toBe(0);
      expect(out()).toMatch(/SIGINT again: cancelling running requests/);
      expect(out()).toMatch(/tsllm-serve: stopped/);
    } finally {
      proc.kill("SIGKILL");
    }
  });

  it("refuses flags that would turn a check off or refuse every request, before loading anything", async () => {
    // `--api-key "$KEY"` with KEY unset served without a key check; --max-queue 0 answered 429 to every request.
    const engine = "/nonexistent-engine"; // never opened: the flags are refused first
    for (const [flags, line] of [
      [["--api-key", ""], "error: option '--api-key <key>' argument '' is invalid. --api-key is empty"],
      [
        ["--served-model-name", " "],
        "error: option '--served-model-name <name>' argument ' ' is invalid. --served-model-name is empty",
      ],
      [
        ["--max-queue", "0"],
        "error: option '--max-queue <n>' argument '0' is invalid. Allowed: --max-queue ≥ 1.",
      ],
    ] as const) {
      const r = await runBin(path.join(REPO, "bin/tsllm-serve.mjs"), [engine, ...flags]);
      expect(r.status, flags.join(" ")).toBe(1);
      expect(r.stderr.split("\n")[0]).toBe(line);
      expect(r.stdout).toBe("");
    }
  });
});
