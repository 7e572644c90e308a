// tsllm-compile -o never loses a user's data (src/engine/output-dir.ts), tried through the real CLI in
// a sandbox: a project folder with files, the CLI run from inside it, and the whole sandbox tree
// (names, bytes, mtimes) compared before and after each refusal.
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { Module } from "../src/dsl/module.ts";
import { loadModelFile } from "../src/model-file.ts";
import { LLAMA_MODEL, REPO, snapshot, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const COMPILE = path.join(REPO, "bin/tsllm-compile.mjs");

let box: string; // sandbox: box/proj (the cwd, with files), box/home (HOME), box/eng (an earlier engine)
let proj: string;

function compile(args: string[], o: { cwd?: string } = {}) {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [COMPILE, LLAMA_MODEL, "--sm", "90", ...args], {
    cwd: o.cwd ?? proj,
    encoding: "utf8",
    env: { ...process.env, HOME: path.join(box, "home"), NO_COLOR: "1" },
    timeout: 60_000,
  });
  const err = r.stderr.split("\n").filter((l) => l.startsWith("error:"));
  return { code: r.status, err, stdout: r.stdout, secs: (performance.now() - t0) / 1000 };
}

/** Runs a compile that must be refused: one error line naming `mention`, nothing in the sandbox touched. */
function expectRefused(args: string[], mention: RegExp, o: { cwd?: string } = {}) {
  const before = snapshot(box);
  const r = compile(args, o);
  expect(r.code).toBe(1);
  expect(r.err).toHaveLength(1);
  expect(r.err[0]).toMatch(mention);
  expect(snapshot(box)).toEqual(before);
  return r;
}

beforeEach(() => {
  box = tmpDir("tsllm-outdir-");
  proj = path.join(box, "proj");
  fs.mkdirSync(path.join(proj, "data"), { recursive: true });
  fs.writeFileSync(path.join(proj, "main.py"), "print('hello')\n");
  fs.writeFileSync(path.join(proj, "data", "train.csv"), "a,b\n1,2\n");
  fs.mkdirSync(path.join(box, "home"));
  fs.writeFileSync(path.join(box, "home", ".bashrc"), "# mine\n");
});

describe("tsllm-compile -o refuses targets it must not replace", () => {
  it('"" (an unset variable), even with --force', () => {
    expectRefused(["-o", ""], /^error: -o "": empty output path/);
    expectRefused(["-o", "", "--force"], /^error: -o "": empty output path/);
  });

  it("the current directory and its ancestors, even with --force", () => {
    expectRefused(["-o", "."], /^error: -o \.: refusing to replace the current directory$/);
    expectRefused(["-o", ".", "--force"], /the current directory/);
    expectRefused(["-o", proj, "--force"], /the current directory/);
    expectRefused(
      ["-o", "..", "--force"],
      /^error: -o \.\.: refusing to replace an ancestor of the current directory$/,
    );
    expectRefused(["-o", "data/.."], /the current directory/);
    expectRefused(["-o", "/", "--force"], /^error: -o \/: refusing to replace the root directory$/);
  });

  it("the home folder, even with --force", () => {
    expectRefused(["-o", path.join(box, "home"), "--force"], /refusing to replace your home folder$/);
  });

  it("a file or a folder that is not ours, unless --force", () => {
    expectRefused(
      ["-o", "main.py"],
      /^error: -o main\.py: exists and is a file, not a tsllm engine; .*--force/,
    );
    expectRefused(["-o", "data"], /^error: -o data: is a folder with files in it that is not a tsllm engine/);
    // The project folder itself, from its parent (the parent is the cwd here).
    expectRefused(["-o", "proj"], /^error: -o proj: is a folder with files in it/, { cwd: box });
    fs.symlinkSync(path.join(proj, "data"), path.join(proj, "link"));
    expectRefused(["-o", "link"], /^error: -o link: exists and is a symbolic link/);
  });

  it("an earlier engine with foreign files added", () => {
    expect(compile(["-o", "eng"]).code).toBe(0);
    fs.writeFileSync(path.join(proj, "eng", "notes.txt"), "my notes\n");
    expectRefused(
      ["-o", "eng"],
      /^error: -o eng: is a tsllm output but also holds 1 other file\(s\) \(notes\.txt\)/,
    );
  });

  it("a folder holding the build's own input, even with --force", () => {
    const ck = path.join(proj, "ckpt");
    fs.cpSync(TINY_LLAMA, ck, { recursive: true });
    expectRefused(
      ["--checkpoint", ck, "-o", ck, "--force"],
      /^error: -o .*ckpt: contains .*ckpt, an input of this build/,
    );
  });

  // A FIFO was replaced by the engine folder with --force (and, as root, so was /dev/null).
  it("a FIFO, even with --force", () => {
    const fifo = path.join(proj, "pipe");
    execFileSync("mkfifo", [fifo]);
    expectRefused(
      ["-o", "pipe", "--force"],
      /^error: -o pipe: refusing to replace a device, FIFO or socket$/,
    );
    expect(fs.lstatSync(fifo).isFIFO()).toBe(true);
  });

  it("a path that cannot be created fails at once", () => {
    const r = expectRefused(["-o", "/proc/x"], /^error: -o \/proc\/x: cannot create a folder in \/proc: /);
    expect(r.secs).toBeLessThan(20);
    fs.writeFileSync(path.join(box, "afile"), "");
    expectRefused(["-o", path.join(box, "afile", "sub", "eng")], /afile is not a directory$/);
  });
});

describe("tsllm-compile -o replaces what it may", () => {
  it("an earlier engine or ONNX export, an empty folder, a new nested path; nothing else changes", () => {
    const before = snapshot(proj);
    expect(compile(["-o", "eng"]).code).toBe(0);
    const first = fs.readFileSync(path.join(proj, "eng", "config.json"), "utf8");
    expect(compile(["-o", "eng", "--seed", "7"]).code).toBe(0);
    const second = fs.readFileSync(path.join(proj, "eng", "config.json"), "utf8");
    expect(second).not.toEqual(first);
    expect(compile(["-o", "eng", "--emit", "onnx"]).code).toBe(0);
    expect(fs.readdirSync(path.join(proj, "eng")).sort()).toEqual([
      "onnx.json",
      "rank0.onnx",
      "rank0.onnx.data",
    ]);
    expect(compile(["-o", "eng"]).code).toBe(0);
    expect(fs.existsSync(path.join(proj, "eng", "rank0.engine"))).toBe(true);
    // An engine that carries its checkpoint's tokenizer files is ours too.
    expect(compile(["--checkpoint", TINY_LLAMA, "-o", "eng"]).code).toBe(0);
    expect(fs.existsSync(path.join(proj, "eng", "tokenizer.json"))).toBe(true);
    expect(compile(["-o", "eng"]).code).toBe(0);
    fs.mkdirSync(path.join(proj, "empty"));
    expect(compile(["-o", "empty"]).code).toBe(0);
    expect(compile(["-o", "new/nested/eng"]).code).toBe(0);
    const after = snapshot(proj);
    for (const [k, v] of Object.entries(before)) expect(after[k]).toBe(v);
    expect(
      Object.keys(after).filter((k) => /\.(tmp|old)-\d+-/.test(k) || k.includes(".tsllm-probe")),
    ).toEqual([]);
  });

  it("temporary names never reuse a path of the user's", () => {
    // Files named like our temporary folders, for this and any pid: all left alone.
    for (const n of ["eng.tmp-1", "eng.old-1-0", "eng.tmp-99999-x"])
      fs.writeFileSync(path.join(proj, n), "mine\n");
    expect(compile(["-o", "eng"]).code).toBe(0);
    const before = snapshot(box);
    expect(compile(["-o", "eng", "--seed", "3"]).code).toBe(0);
    const after = snapshot(box);
    for (const k of Object.keys(before).filter((k) => !k.startsWith("proj/eng/") && k !== "proj/eng"))
      expect(after[k]).toBe(before[k]);
  });

  it("--force replaces a file or a foreign folder, and only that", () => {
    const before = snapshot(box);
    expect(compile(["-o", "main.py", "--force"]).code).toBe(0);
    expect(compile(["-o", "data", "--force"]).code).toBe(0);
    const after = snapshot(box);
    for (const k of Object.keys(before).filter(
      (k) => !k.startsWith("proj/main.py") && !k.startsWith("proj/data"),
    ))
      expect(after[k]).toBe(before[k]);
    expect(fs.existsSync(path.join(proj, "main.py", "rank0.engine"))).toBe(true);
    expect(fs.existsSync(path.join(proj, "data", "train.csv"))).toBe(false);
  });
});

/** A Llama checkpoint of ~270 MB (sparse zeros: no disk used) so that writing its engine takes a while. */
async function bigCheckpoint(dir: string): Promise<void> {
  const cfg = {
    ...JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8")),
    hidden_size: 1024,
    intermediate_size: 4096,
    num_attention_heads: 8,
    num_key_value_heads: 8,
    head_dim: 128,
    num_hidden_layers: 4,
    vocab_size: 32000,
  };
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));
  const model = await loadModelFile(LLAMA_MODEL);
  const m = new Module("bf16", { maxBatchSize: 1, maxSeqLen: 16, maxNumTokens: 16 });
  model.forward(m, model.parseConfig(cfg, "config.json"));
  const entries = new Map<string, number[]>();
  for (const v of m.graph.values.values())
    if (v.recipe?.kind === "checkpoint") for (const p of v.recipe.parts) entries.set(p.name, p.shape);
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const [name, shape] of entries) {
    const n = shape.reduce((a, b) => a * b, 1) * 2;
    header[name] = { dtype: "BF16", shape, data_offsets: [off, off + n] };
    off += n;
  }
  const json = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  const file = path.join(dir, "model.safetensors");
  fs.writeFileSync(file, Buffer.concat([len, json]));
  fs.truncateSync(file, 8 + json.length + off);
}

describe("an interrupted build", () => {
  let ck: string;
  beforeAll(async () => {
    ck = path.join(tmpDir(), "big");
    await bigCheckpoint(ck);
  });
  for (const sig of ["SIGINT", "SIGTERM"] as const)
    it(`${sig} leaves the old engine intact and no temporary folder`, async () => {
      expect(compile(["-o", "eng"]).code).toBe(0);
      const before = snapshot(box);
      const child = spawn(
        process.execPath,
        [COMPILE, LLAMA_MODEL, "--sm", "90", "--checkpoint", ck, "-o", "eng"],
        {
          cwd: proj,
          stdio: "ignore",
        },
      );
      const tmpRank = () => {
        const t = fs.readdirSync(proj).find((n) => n.startsWith(`eng.tmp-${child.pid}-`));
        return t ? path.join(proj, t, "rank0.engine") : "";
      };
      const exited = new Promise<{ code: number | null; signal: string | null }>((res) =>
        child.on("exit", (code, signal) => res({ code, signal })),
      );
      // Interrupt once the new engine is being written (its rank file has bytes in the temporary folder).
      let seen = false;
      for (let i = 0; i < 6000 && !seen && child.exitCode === null; i++) {
        const f = tmpRank();
        seen = f !== "" && fs.existsSync(f) && fs.statSync(f).size > 0;
        if (!seen) await new Promise((r) => setTimeout(r, 5));
      }
      expect(seen).toBe(true);
      child.kill(sig);
      const r = await exited;
      expect(r.signal).toBe(sig);
      expect(snapshot(box)).toEqual(before);
    });

  // A rank's ONNX export is one synchronous call: the signal used to wait for it, then for commit(), so the
  // interrupted export replaced the old one and the process exited 0.
  it("SIGINT during --emit onnx leaves the old export intact and no temporary folder", async () => {
    expect(compile(["--emit", "onnx", "-o", "onnx"]).code).toBe(0);
    const before = snapshot(box);
    const child = spawn(
      process.execPath,
      [COMPILE, LLAMA_MODEL, "--sm", "90", "--checkpoint", ck, "--emit", "onnx", "-o", "onnx"],
      { cwd: proj, stdio: "ignore" },
    );
    const exited = new Promise<{ code: number | null; signal: string | null }>((res) =>
      child.on("exit", (code, signal) => res({ code, signal })),
    );
    const tmpData = () => {
      const t = fs.readdirSync(proj).find((n) => n.startsWith(`onnx.tmp-${child.pid}-`));
      return t ? path.join(proj, t, "rank0.onnx.data") : "";
    };
    // Interrupt once the export is writing its weights (inside the synchronous export of rank 0).
    let seen = false;
    for (let i = 0; i < 6000 && !seen && child.exitCode === null; i++) {
      const f = tmpData();
      seen = f !== "" && fs.existsSync(f) && fs.statSync(f).size > 0;
      if (!seen) await new Promise((r) => setTimeout(r, 5));
    }
    expect(seen).toBe(true);
    child.kill("SIGINT");
    const r = await exited;
    expect(r).toEqual({ code: null, signal: "SIGINT" });
    expect(snapshot(box)).toEqual(before);
  });
});
