// tsllm-run on the batch manager: stops at the engine's eos ids (generation_config.json's 508/511 for
// tiny-llama), --ignore-eos, --stop-token-ids, several prompts (repeated --input-ids and a JSONL file)
// printed one line each in prompt order, and the max_seq_len check before anything runs.
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { buildFixture, REPO, tmpDir } from "../fixtures.ts";

const RUN = path.join(REPO, "bin/tsllm-run.mjs");
const run = (args: string[]) =>
  spawnSync(process.execPath, [RUN, dir, "--device", "cpu", ...args], { encoding: "utf8" });
const EOS = [508, 511];
let dir: string;
// Greedy continuations of these prompts on the tiny-llama fixture reach an eos id (checked below).
const P1 = "0,3,0";
const P2 = "385,3,55";

beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 256, maxNumTokens: 64, tokensPerBlock: 8 });
});

describe("tsllm-run generation", () => {
  it("stops at the engine's eos ids; --ignore-eos runs to --max-new-tokens", () => {
    const free = run(["--input-ids", P1, "--max-new-tokens", "40", "--ignore-eos"]);
    expect(free.status, free.stderr).toBe(0);
    const all = free.stdout.trim().split(",").map(Number);
    expect(all.length).toBe(40);
    const k = all.findIndex((t) => EOS.includes(t));
    expect(k).toBeGreaterThanOrEqual(0);
    const stopped = run(["--input-ids", P1, "--max-new-tokens", "40"]);
    expect(stopped.stdout).toBe(`${all.slice(0, k + 1).join(",")}\n`);
  });

  it("--stop-token-ids ends at the first of them", () => {
    const all = run(["--input-ids", P1, "--max-new-tokens", "12", "--ignore-eos"])
      .stdout.trim()
      .split(",")
      .map(Number);
    const stop = all[4];
    // A second stop id the run never reaches (in the vocabulary: an id outside it is refused).
    const never = [...Array(512).keys()].find((t) => !all.includes(t));
    const r = run(["--input-ids", P1, "--max-new-tokens", "12", "--stop-token-ids", `${stop},${never}`]);
    expect(r.stdout).toBe(`${all.slice(0, all.indexOf(stop) + 1).join(",")}\n`);
  });

  it("several prompts (repeated --input-ids and a JSONL file): one line each, in order, each as alone", () => {
    const alone = [P1, P2, "7,7,7,7"].map((p) => run(["--input-ids", p, "--max-new-tokens", "30"]).stdout);
    const file = path.join(tmpDir(), "prompts.jsonl");
    fs.writeFileSync(
      file,
      `${JSON.stringify({ input_ids: [7, 7, 7, 7] })}\n\n${JSON.stringify({ input_ids: [0, 3, 0], output_tokens: 5 })}\n`,
    );
    const r = run(["--input-ids", P1, "--input-ids", P2, "--input-file", file, "--max-new-tokens", "30"]);
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.split("\n");
    expect(lines.length).toBe(5);
    expect(`${lines[0]}\n`).toBe(alone[0]);
    expect(`${lines[1]}\n`).toBe(alone[1]);
    expect(`${lines[2]}\n`).toBe(alone[2]);
    expect(lines[3]).toBe(alone[0].trim().split(",").slice(0, 5).join(","));
  });

  it("piped, --verbose shows generation progress as plain lines on stderr; stdout keeps the ids", () => {
    // Large engines (>= 256 MiB) show it without --verbose; the fixture is small, so --verbose asks for it.
    const r = spawnSync(
      process.execPath,
      [RUN, dir, "--device", "cpu", "--input-ids", P1, "--max-new-tokens", "4", "--ignore-eos", "--verbose"],
      {
        encoding: "utf8",
        env: { ...process.env, TSLLM_PROGRESS_INTERVAL: "0" },
      },
    );
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split(",")).toHaveLength(4);
    // 3 prompt tokens + 3 forwards for 4 new tokens (the last sampled token needs no forward).
    expect(r.stderr).toMatch(/^generate: \d+\/6 \(\d+%\)/m);
    expect(r.stderr).toMatch(/^generate: 6 in [\d.]+ s, [\d.]+ tok\/s$/m);
  });

  it("stops generating once its stdout reader is gone, and exits 0", async () => {
    // Four prompts of 3 ids and 250 new tokens: 4 x (3 + 249) = 1,008 tokens through the steps when run to the
    // end. The reader leaves at the first bytes (`tsllm-run … | head -c 1`); --verbose prints how many ran.
    const prompts = [P1, P2, P1, P2].flatMap((p) => ["--input-ids", p]);
    const child = spawn(process.execPath, [
      RUN,
      dir,
      ...["--device", "cpu", "--verbose", "--ignore-eos", "--max-new-tokens", "250"],
      ...prompts,
    ]);
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    child.stdout.once("data", () => child.stdout.destroy());
    const code = await new Promise((res) => child.on("close", res));
    expect(code, stderr).toBe(0);
    expect(stderr).not.toMatch(/error/);
    const ran = Number(/^generate: (\d+) in /m.exec(stderr)?.[1]);
    expect(ran).toBeGreaterThan(0);
    expect(ran).toBeLessThan(1008);
  });

  it("refuses prompt + max_new_tokens over max_seq_len before generating anything", () => {
    const r = run(["--input-ids", "1,2", "--input-ids", "1,2,3", "--max-new-tokens", "254"]);
    expect(r.status).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      "error: --input-ids (prompt 2): prompt of 3 tokens + --max-new-tokens 254 = 257 exceeds max_seq_len 256\n",
    );
  });
});
