// Bad flags and wrong inputs through the real CLIs: refused before any work with one line naming the
// value and what is allowed, exit 1, nothing in the engine or its folder touched (tree compared).
// Also: --version on every bin, usage errors as one line + a --help hint, help text wrapped by commander,
// `tsllm-inspect | head` without EPIPE, and engine configs that name files outside the engine.
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { LLAMA_MODEL, REPO, snapshot, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const PKG = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8"));
const VERSION = PKG.version;
/** Every bin package.json declares (tsllm-compile → "compile"), so a new one is covered too. */
const BINS = Object.keys(PKG.bin).map((b) => b.replace(/^tsllm-/, ""));

function cli(bin: string, args: string[], o: { shell?: string } = {}) {
  const r = o.shell
    ? spawnSync("sh", ["-c", o.shell], { encoding: "utf8", timeout: 60_000 })
    : spawnSync(process.execPath, [path.join(REPO, `bin/tsllm-${bin}.mjs`), ...args], {
        encoding: "utf8",
        env: { ...process.env, NO_COLOR: "1" },
        timeout: 60_000,
      });
  const lines = r.stderr.split("\n").filter(Boolean);
  return {
    code: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    lines,
    err: lines.filter((l) => l.startsWith("error:")),
  };
}

let box: string;
let engine: string; // tiny Llama engine, max_seq_len 16, vocab 512

beforeAll(async () => {
  box = tmpDir("tsllm-msg-");
  engine = path.join(box, "engine");
  await compileEngine({
    modelFile: LLAMA_MODEL,
    sm: 90,
    dtype: "fp32",
    out: engine,
    maxSeqLen: 16,
    maxNumTokens: 64,
  });
});

/** Runs tsllm-BIN expecting a refusal: exit 1, one error line matching `msg`, the sandbox untouched. */
function expectRefused(bin: string, args: string[], msg: RegExp) {
  const before = snapshot(box);
  const r = cli(bin, args);
  expect(r.code, r.stderr).toBe(1);
  expect(r.err, r.stderr).toHaveLength(1);
  expect(r.err[0]).toMatch(msg);
  expect(r.stdout).toBe("");
  expect(snapshot(box)).toEqual(before);
  return r;
}

describe("every bin", () => {
  it("package.json lists the bins", () => {
    expect(BINS).toEqual(expect.arrayContaining(["compile", "run", "inspect", "bench", "serve", "tokenize"]));
  });

  it("has --version", () => {
    for (const b of BINS) {
      const r = cli(b, ["--version"]);
      expect(r.code, b).toBe(0);
      expect(r.stdout.trim(), b).toBe(VERSION);
    }
  });

  it("answers a usage error with one line and a --help hint, not the whole help", () => {
    for (const b of BINS) {
      const r = cli(b, ["--no-such-flag"]);
      expect(r.code, b).toBe(1);
      expect(r.lines, `${b}: ${r.stderr}`).toHaveLength(2);
      expect(r.lines[0]).toMatch(/^error: /);
      expect(r.lines[1]).toBe(`(tsllm-${b} --help lists the flags)`);
    }
  });

  it("prints help wrapped by commander, not hard-wrapped in the source", () => {
    for (const b of BINS) {
      const r = cli(b, ["--help"]);
      expect(r.code, b).toBe(0);
      const lines = r.stdout.split("\n");
      expect(
        lines.every((l) => l.length <= 80),
        b,
      ).toBe(true);
      // The description paragraph: commander fills each line to the width; a newline in the source would
      // leave a short line in the middle of it.
      const desc = lines.slice(2, lines.indexOf("", 2));
      expect(desc.length, b).toBeGreaterThan(0);
      for (const l of desc.slice(0, -1)) expect(l.length, `${b}: "${l}"`).toBeGreaterThan(60);
    }
  });
});

describe("tsllm-run --help", () => {
  it("--tolerance lists every default defaultTolerance gives, the fp8 KV cache's 0.2 included", () => {
    const help = cli("run", ["--help"]).stdout.replace(/\s+/g, " ");
    expect(help).toContain(
      "--tolerance <x> max |Δlogit| allowed with --golden (default by engine: fp32 on cpu 1e-3, fp16/bf16 0.05, " +
        "int8-wo 0.1, fp8 0.5, int4-wo 1.25; +0.2 with an fp8 KV cache)",
    );
  });
});

describe("tsllm-run refuses bad flags before any work", () => {
  const cases: [string[], RegExp][] = [
    [
      ["--max-new-tokens", "-1"],
      /'--max-new-tokens <n>' argument '-1' is invalid\. Allowed: --max-new-tokens ≥ 0\.$/,
    ],
    [
      ["--temperature", "-0.5"],
      /'--temperature <t>' argument '-0\.5' is invalid\. Allowed: --temperature ≥ 0\.$/,
    ],
    [["--top-p", "1.5"], /'--top-p <p>' argument '1\.5' is invalid\. Allowed: --top-p in \(0, 1\]\.$/],
    [["--top-p", "0"], /'--top-p <p>' argument '0' is invalid\. Allowed: --top-p in \(0, 1\]\.$/],
    [["--top-k", "-3"], /'--top-k <k>' argument '-3' is invalid\. Allowed: --top-k ≥ 0\.$/],
    [["--tolerance", "0"], /'--tolerance <x>' argument '0' is invalid\. Allowed: --tolerance > 0\.$/],
    [["--temperature", "abc"], /--temperature must be a number, got "abc"$/],
  ];
  for (const [flags, msg] of cases)
    it(flags.join(" "), () => {
      const r = expectRefused("run", [engine, "--device", "cpu", "--input-ids", "1,2", ...flags], msg);
      expect(r.lines[1]).toBe("(tsllm-run --help lists the flags)");
    });

  it("prompt + --max-new-tokens over max_seq_len, before generating", () => {
    expectRefused(
      "run",
      [
        engine,
        "--device",
        "cpu",
        "--input-ids",
        "1,2,3",
        "--input-ids",
        "1,2,3,4,5,6,7,8,9,10",
        "--max-new-tokens",
        "7",
      ],
      /^error: --input-ids \(prompt 2\): prompt of 10 tokens \+ --max-new-tokens 7 = 17 exceeds max_seq_len 16$/,
    );
    // Exactly at the limit it generates.
    const ok = cli("run", [
      engine,
      "--device",
      "cpu",
      "--input-ids",
      "1,2,3,4,5,6,7,8,9,10",
      "--max-new-tokens",
      "6",
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout.trim().split(",")).toHaveLength(6);
  });

  it("a token id outside the vocabulary", () => {
    expectRefused(
      "run",
      [engine, "--device", "cpu", "--input-ids", "1,512"],
      /token id 512 is outside the vocabulary \(allowed: 0\.\.511\)$/,
    );
  });
});

// An empty path (an unset variable in a script: --golden "$GOLDEN") is refused by name: before, --golden "" and
// --input-file "" read as not given, --dataset "" named no file, and prepare-dataset --output "" wrote to stdout.
describe("a path flag given an empty string is refused by name", () => {
  const cases: [string, string[], string][] = [
    ["run", ["--device", "cpu", "--golden", ""], "--golden <file>"],
    ["run", ["--device", "cpu", "--input-file", ""], "--input-file <jsonl>"],
    ["bench", ["throughput", "ENGINE", "--device", "cpu", "--dataset", ""], "--dataset <file>"],
    ["bench", ["throughput", "ENGINE", "--device", "cpu", "--json", ""], "--json <file>"],
    ["bench", ["latency", "ENGINE", "--json", ""], "--json <file>"],
    [
      "bench",
      [
        "prepare-dataset",
        "ENGINE",
        "--num-requests",
        "1",
        "--input-mean",
        "2",
        "--output-mean",
        "2",
        "--output",
        "",
      ],
      "--output <file>",
    ],
    ["bench", ["serve", "--dataset", ""], "--dataset <file>"],
    ["tokenize", ["ENGINE", "--chat", ""], "--chat <file>"],
  ];
  for (const [bin, args, opt] of cases)
    it(`tsllm-${bin} ${bin === "bench" ? `${args[0]} ` : ""}${opt.split(" ")[0]} ""`, () => {
      const flag = opt.split(" ")[0];
      const a = args.map((x) => (x === "ENGINE" ? engine : x));
      const full = bin === "run" ? [engine, ...a] : a;
      expectRefused(bin, full, new RegExp(`option '${opt}' argument '' is invalid\\. ${flag} is empty$`));
    });
});

describe("--fp8-context-fmha takes auto, on or off", () => {
  // Every command that runs engines on the GPU has it; a bad value is refused before the engine is touched.
  const runs: [string, string[]][] = [
    ["run", ["--input-ids", "1,2"]],
    ["serve", []],
    ["bench", ["latency"]],
    ["bench", ["throughput", "--dataset", "x.jsonl"]],
  ];
  for (const [bin, args] of runs)
    it(`tsllm-${bin} ${args[0] ?? ""}`, () => {
      const sub = bin === "bench" ? [args[0]] : [];
      expectRefused(
        bin,
        [...sub, engine, ...args.slice(sub.length), "--fp8-context-fmha", "maybe"],
        /'--fp8-context-fmha <mode>' argument 'maybe' is invalid\. Allowed choices are auto, on, off\.$/,
      );
    });
});

describe("tsllm-compile refuses what can never run", () => {
  for (const sm of ["70", "75"])
    it(`--sm ${sm}, with the reason`, () => {
      const out = path.join(box, `e${sm}`);
      expectRefused(
        "compile",
        [LLAMA_MODEL, "--sm", sm, "-o", out],
        new RegExp(`^error: --sm ${sm}: the tsllm CUDA runtime needs sm 80 or newer`),
      );
    });

  it("limits below 1", () => {
    expectRefused(
      "compile",
      [LLAMA_MODEL, "--sm", "90", "--max-num-tokens", "0", "-o", path.join(box, "x")],
      /Allowed: --max-num-tokens ≥ 1\.$/,
    );
  });
});

describe("tsllm-run / tsllm-inspect say what a directory is", () => {
  it("a Hugging Face model folder given as an engine", () => {
    expectRefused(
      "run",
      [TINY_LLAMA, "--input-ids", "1"],
      /a Hugging Face model folder, not an engine; build one first: tsllm-compile MODEL\.ts --checkpoint .*tiny-llama/,
    );
  });

  it("an ONNX export given as an engine", async () => {
    const onnx = path.join(box, "onnx");
    if (!fs.existsSync(onnx))
      await compileEngine({ modelFile: LLAMA_MODEL, sm: 90, out: onnx, emit: "onnx" });
    expectRefused("inspect", [onnx], /an ONNX export \(onnx\.json\), not an engine/);
  });

  it("a corrupt engine header with --no-verify names the file", () => {
    const bad = path.join(box, "corrupt");
    fs.cpSync(engine, bad, { recursive: true });
    const f = path.join(bad, "rank0.engine");
    const buf = fs.readFileSync(f);
    buf.write("\x00\xff garbage", 24 + 10, "latin1"); // inside the header JSON; size unchanged
    fs.writeFileSync(f, buf);
    expectRefused(
      "run",
      [bad, "--device", "cpu", "--no-verify", "--input-ids", "1"],
      /^error: .*corrupt\/rank0\.engine: corrupt engine header/,
    );
    // A header length past the end of the file.
    buf.writeBigUInt64LE(1n << 62n, 16);
    fs.writeFileSync(f, buf);
    expectRefused(
      "inspect",
      [bad],
      /rank0\.engine: header length 4611686018427387904 is past the end of the file/,
    );
  });

  // It used to end in "error: Unexpected end of JSON input", naming no file.
  it("tsllm-inspect: a report.json that is not JSON is named, in one line, exit 1", () => {
    const bad = path.join(box, "bad-report");
    fs.cpSync(engine, bad, { recursive: true });
    fs.writeFileSync(path.join(bad, "report.json"), '{"passes": [');
    const r = cli("inspect", [bad]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.lines).toEqual([
      `error: ${path.join(bad, "report.json")}: not valid JSON (Unexpected end of JSON input)`,
    ]);
  });

  it("tsllm-inspect | head does not crash with EPIPE", () => {
    const r = cli("inspect", [], {
      shell: `"${process.execPath}" "${path.join(REPO, "bin/tsllm-inspect.mjs")}" "${engine}" | head -1`,
    });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^engine .*: LlamaForCausalLM/);
    expect(r.stderr).toBe("");
  });
});

describe("a reader that goes away", () => {
  it("tsllm-compile with both its stdout and stderr readers gone still finishes the engine: exit 0, no temporary folder", async () => {
    const dir = path.join(box, "piped");
    const child = spawn(
      process.execPath,
      [
        path.join(REPO, "bin/tsllm-compile.mjs"),
        LLAMA_MODEL,
        "--checkpoint",
        TINY_LLAMA,
        "--sm",
        "90",
        "-o",
        dir,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    // Our ends closed before the compiler writes a byte: its writes meet EPIPE (it used to exit 0 there, with no
    // engine and its <out>.tmp-* folder left behind).
    child.stdout.destroy();
    child.stderr.destroy();
    const code = await new Promise<number | null>((res) => child.on("exit", (c) => res(c)));
    expect(code).toBe(0);
    expect(fs.readdirSync(box).filter((n) => n.startsWith("piped"))).toEqual(["piped"]);
    const e = openEngine(dir);
    expect(e.ranks.map((r) => (r.entry?.bytes ?? 0) > 0)).toEqual([true]);
  });
});

describe("an engine's config.json may only name files inside the engine", () => {
  function tampered(name: string, edit: (cfg: Record<string, unknown>) => void): string {
    const dir = path.join(box, name);
    fs.cpSync(engine, dir, { recursive: true });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    edit(cfg);
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));
    return dir;
  }

  // A FIFO outside the engine: opening it would block, so a pass proves it was never opened.
  beforeAll(() => {
    spawnSync("mkfifo", [path.join(box, "outside")]);
  });

  for (const file of ["../outside", "../../../etc/hostname", "/etc/hostname", "..", "sub/rank0.engine", ""])
    it(`rank file "${file}" is refused before any file is opened`, () => {
      const dir = tampered(`t${Math.random().toString(36).slice(2)}`, (c) => {
        (c.ranks as { file: string }[])[0].file = file;
      });
      expectRefused(
        "run",
        [dir, "--device", "cpu", "--no-verify", "--input-ids", "1"],
        /config\.json: invalid engine config at "ranks\.0\.file": must be a plain file name in the engine directory$/,
      );
    });

  it("a tokenizer file outside the engine is refused", () => {
    const dir = tampered("tok", (c) => {
      c.tokenizer = { files: ["../outside"] };
    });
    expectRefused(
      "inspect",
      [dir],
      /invalid engine config at "tokenizer\.files\.0": must be a plain file name/,
    );
  });
});
