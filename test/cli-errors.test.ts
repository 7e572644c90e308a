// Bad input through the real CLI: one clear line naming what is wrong and where, a non-zero exit,
// and no engine directory (nor temp directory) left behind.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { GPTJ_MODEL, LLAMA_MODEL, REPO, TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const COMPILE = path.join(REPO, "bin/tsllm-compile.mjs");

function compile(args: string[]) {
  const r = spawnSync(process.execPath, [COMPILE, ...args], {
    encoding: "utf8",
    env: { ...process.env, NO_COLOR: "1" },
  });
  const errLines = r.stderr.split("\n").filter((l) => l.startsWith("error:"));
  return { code: r.status, err: errLines.join("\n"), stderr: r.stderr };
}

/** Copies a fixture checkpoint into a temp dir so a test can break it. */
function copyFixture(src: string): string {
  const dir = path.join(tmpDir(), path.basename(src));
  fs.cpSync(src, dir, { recursive: true });
  for (const f of fs.readdirSync(dir)) fs.chmodSync(path.join(dir, f), 0o644);
  return dir;
}

function expectCleanFailure(args: string[], out: string, ...mustMention: string[]) {
  const r = compile([...args, "-o", out]);
  expect(r.code).not.toBe(0);
  expect(r.err.split("\n")).toHaveLength(1);
  for (const m of mustMention) expect(r.err).toContain(m);
  expect(fs.existsSync(out)).toBe(false);
  const leftovers = fs.readdirSync(path.dirname(out)).filter((f) => f.startsWith(path.basename(out)));
  expect(leftovers).toEqual([]);
  return r;
}

/** Rewrites a safetensors header in place (keeping the data section). */
function patchHeader(
  file: string,
  edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void,
) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  edit(header);
  let json = JSON.stringify(header);
  json += " ".repeat(Math.max(0, n - json.length));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  fs.writeFileSync(file, Buffer.concat([len, Buffer.from(json), buf.subarray(8 + n)]));
}

describe("tsllm-compile rejects bad input cleanly", () => {
  const out = () => path.join(tmpDir(), "engine");

  it("truncated safetensors", () => {
    const ck = copyFixture(TINY_LLAMA);
    const f = path.join(ck, "model.safetensors");
    fs.truncateSync(f, fs.statSync(f).size - 1000);
    expectCleanFailure(
      [LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "model.safetensors",
      "truncated",
    );
  });

  it("overlapping offsets", () => {
    const ck = copyFixture(TINY_LLAMA);
    let moved = "";
    let onto = "";
    patchHeader(path.join(ck, "model.safetensors"), (h) => {
      const names = Object.keys(h).filter((k) => k !== "__metadata__");
      [onto, moved] = names;
      const a = h[onto];
      const b = h[moved];
      b.data_offsets = [a.data_offsets[0], a.data_offsets[0] + (b.data_offsets[1] - b.data_offsets[0])];
    });
    // Both now start at the same offset; whichever sorts second is reported as overlapping the other.
    const r = expectCleanFailure([LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"], out(), "model.safetensors");
    const m = r.err.match(
      /model\.safetensors: tensor "([^"]+)": data_offsets \[\d+, \d+\] overlapping tensor "([^"]+)" \(which ends at \d+\)$/,
    );
    expect(m).not.toBeNull();
    expect([m![1], m![2]].sort()).toEqual([moved, onto].sort());
  });

  it("out-of-range offsets", () => {
    const ck = copyFixture(TINY_LLAMA);
    let name = "";
    patchHeader(path.join(ck, "model.safetensors"), (h) => {
      const last = Object.entries(h)
        .filter(([k]) => k !== "__metadata__")
        .sort((x, y) => y[1].data_offsets[1] - x[1].data_offsets[1])[0];
      name = last[0];
      last[1].data_offsets = [last[1].data_offsets[0] + 1_000_000, last[1].data_offsets[1] + 1_000_000];
    });
    const r = expectCleanFailure([LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"], out(), "model.safetensors");
    expect(r.err).toMatch(
      new RegExp(
        `model\\.safetensors: tensor "${name.replaceAll(".", "\\.")}": data_offsets \\[\\d+, \\d+\\] out of range of the \\d+-byte data section$`,
      ),
    );
  });

  it("dtype/shape size mismatch", () => {
    const ck = copyFixture(TINY_LLAMA);
    patchHeader(path.join(ck, "model.safetensors"), (h) => {
      h["model.norm.weight"].dtype = "F32";
    });
    expectCleanFailure(
      [LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "model.safetensors",
      "model.norm.weight",
    );
  });

  it("a missing shard named in the index", () => {
    const ck = copyFixture(TINY_GPTJ);
    fs.rmSync(path.join(ck, "model-00003-of-00006.safetensors"));
    expectCleanFailure(
      [GPTJ_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "model-00003-of-00006.safetensors",
    );
  });

  it("a config missing a required field", () => {
    const ck = copyFixture(TINY_LLAMA);
    const cfg = JSON.parse(fs.readFileSync(path.join(ck, "config.json"), "utf8"));
    delete cfg.num_hidden_layers;
    fs.writeFileSync(path.join(ck, "config.json"), JSON.stringify(cfg));
    expectCleanFailure(
      [LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "config.json",
      "num_hidden_layers",
    );
  });

  it("an unsupported architecture", () => {
    const ck = copyFixture(TINY_LLAMA);
    const cfg = JSON.parse(fs.readFileSync(path.join(ck, "config.json"), "utf8"));
    cfg.architectures = ["FalconForCausalLM"];
    fs.writeFileSync(path.join(ck, "config.json"), JSON.stringify(cfg));
    expectCleanFailure(
      [LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "FalconForCausalLM",
      "LlamaForCausalLM",
    );
  });

  it("a checkpoint whose tensor has the wrong shape", () => {
    const ck = copyFixture(TINY_LLAMA);
    const cfg = JSON.parse(fs.readFileSync(path.join(ck, "config.json"), "utf8"));
    cfg.intermediate_size = 256;
    fs.writeFileSync(path.join(ck, "config.json"), JSON.stringify(cfg));
    expectCleanFailure(
      [LLAMA_MODEL, "--checkpoint", ck, "--sm", "90"],
      out(),
      "gate_proj.weight",
      "[352,128]",
    );
  });

  it("an unknown --sm", () => {
    expectCleanFailure([LLAMA_MODEL, "--checkpoint", TINY_LLAMA, "--sm", "91"], out(), "--sm 91");
  });

  it("a failed rebuild keeps the previous engine intact", () => {
    const dir = out();
    expect(compile([GPTJ_MODEL, "--checkpoint", TINY_GPTJ, "--sm", "90", "-o", dir]).code).toBe(0);
    const before = fs.readFileSync(path.join(dir, "config.json"), "utf8");
    const ck = copyFixture(TINY_GPTJ);
    fs.rmSync(path.join(ck, "model-00001-of-00006.safetensors"));
    const r = compile([GPTJ_MODEL, "--checkpoint", ck, "--sm", "90", "-o", dir]);
    expect(r.code).not.toBe(0);
    expect(fs.readFileSync(path.join(dir, "config.json"), "utf8")).toBe(before);
  });
});
