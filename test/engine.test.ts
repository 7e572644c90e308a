// Engine format: version and content-hash checks, random weights, limits, CLI run paths.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { openSafetensors } from "../src/checkpoint/safetensors.ts";
import { compileEngine } from "../src/compile.ts";
import { openEngine, readWeightBytes, verifyEngine } from "../src/engine/reader.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { LimitError } from "../src/executor/types.ts";
import { randomFill } from "../src/weights/random.ts";
import { buildFixture, GPTJ_MODEL, LLAMA_MODEL, REPO, TINY_GPTJ, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const RUN = path.join(REPO, "bin/tsllm-run.mjs");
const run = (args: string[]) => spawnSync(process.execPath, [RUN, ...args], { encoding: "utf8" });

describe("engine files", () => {
  it("a byte flipped in the last MB fails the hash checked while loading, naming the file", async () => {
    const dir = await buildFixture("llama");
    const f = path.join(dir, "rank0.engine");
    const b = fs.readFileSync(f);
    b[b.length - 10] ^= 0xff;
    fs.writeFileSync(f, b);
    expect(() => openEngine(dir)).not.toThrow(); // size and header are fine: only the loading pass can tell
    expect(() => ReferenceExecutor.load(dir)).toThrow(
      /rank0\.engine: content hash .* does not match config\.json/,
    );
    expect(() => verifyEngine(openEngine(dir))).toThrow(/rank0\.engine: content hash/);
    expect(() => ReferenceExecutor.load(dir, { verify: false })).not.toThrow();
    const r = run([dir, "--device", "cpu", "--input-ids", "1,2"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^error: .*rank0\.engine: content hash/m);
    expect(run([dir, "--device", "cpu", "--input-ids", "1,2", "--no-verify"]).status).toBe(0);
  });

  it("size and header are checked before any weight is read (a truncated file is named as such)", async () => {
    const dir = await buildFixture("llama");
    const f = path.join(dir, "rank0.engine");
    fs.truncateSync(f, fs.statSync(f).size - 4096);
    expect(() => openEngine(dir)).toThrow(
      /rank0\.engine: \d+ bytes, config\.json says \d+ \(truncated or replaced\)/,
    );
    const dir2 = await buildFixture("llama");
    const f2 = path.join(dir2, "rank0.engine");
    const b = fs.readFileSync(f2);
    b.write("XXXXXXXX", 0, "latin1");
    fs.writeFileSync(f2, b);
    expect(() => ReferenceExecutor.load(dir2)).toThrow(/rank0\.engine: not a tsllm engine \(bad magic\)/);
  });

  it("another format version is refused with both versions named", async () => {
    const dir = await buildFixture("llama");
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, "config.json"), "utf8"));
    cfg.format_version = 2;
    fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));
    expect(() => openEngine(dir)).toThrow(/format version 2, this tsllm reads version 1/);
    const r = run([dir, "--device", "cpu", "--input-ids", "1,2"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/^error: .*format version 2/m);
  });

  it("fp16 weights from an fp16 checkpoint are stored byte for byte (no conversion)", async () => {
    const dir = await buildFixture("gptj", { dtype: "fp16" });
    const e = openEngine(dir);
    const r = e.ranks[0];
    const v = r.header.values.find((x) => x.name === "transformer.h.1.mlp.fc_in.weight")!;
    const w = r.header.weights.find((x) => x.value === v.id)!;
    const idx = JSON.parse(fs.readFileSync(path.join(TINY_GPTJ, "model.safetensors.index.json"), "utf8"));
    const st = openSafetensors(path.join(TINY_GPTJ, idx.weight_map["transformer.h.1.mlp.fc_in.weight"]));
    expect(
      Buffer.from(readWeightBytes(r, w.offset, w.nbytes)).equals(
        Buffer.from(st.read("transformer.h.1.mlp.fc_in.weight")),
      ),
    ).toBe(true);
    st.close();
  });
});

describe("random weights", () => {
  it("store seeds, not bytes, and every load materialises the same values", async () => {
    const out = path.join(tmpDir(), "e");
    await compileEngine({
      modelFile: LLAMA_MODEL,
      sm: 90,
      dtype: "fp32",
      out,
      maxNumTokens: 64,
      maxBatchSize: 4,
    });
    const e = openEngine(out);
    const ws = e.ranks[0].header.weights;
    expect(ws.filter((w) => w.random).length).toBeGreaterThan(10);
    expect(ws.filter((w) => w.random).every((w) => w.nbytes === 0)).toBe(true);
    const a = ReferenceExecutor.load(out)
      .step([{ seqId: 1, tokens: [1, 2, 3], logits: "last" }])
      .get(1)![0];
    const b = ReferenceExecutor.load(out)
      .step([{ seqId: 1, tokens: [1, 2, 3], logits: "last" }])
      .get(1)![0];
    expect(Array.from(a)).toEqual(Array.from(b));
    expect(a.some((x) => x !== 0)).toBe(true);
  });

  it("the generator matches its definition (lowbias32 hash, fp32 math)", () => {
    // Reference values computed by hand from docs/engine-format.md's formula.
    const v = randomFill(4, 1234, 0, 1);
    const h = (x: number) => {
      x ^= x >>> 16;
      x = Math.imul(x, 0x7feb352d) >>> 0;
      x ^= x >>> 15;
      x = Math.imul(x, 0x846ca68b) >>> 0;
      return (x ^ (x >>> 16)) >>> 0;
    };
    for (let i = 0; i < 4; i++) {
      const u = h((h(1234) ^ i) >>> 0);
      expect(v[i]).toBe(Math.fround(2 * ((u >>> 8) / 2 ** 24) - 1));
    }
    const s = randomFill(100000, 7, 0.5, 0.25);
    expect(Math.min(...s)).toBeGreaterThanOrEqual(0.25);
    expect(Math.max(...s)).toBeLessThanOrEqual(0.75);
    expect(Math.abs(s.reduce((a, b) => a + b, 0) / s.length - 0.5)).toBeLessThan(0.005);
  });
});

describe("runtime limits", () => {
  it("smaller-than-built is fine, beyond-the-limits is a clear error", async () => {
    const dir = await buildFixture("llama", { maxSeqLen: 8, maxNumTokens: 16, maxBatchSize: 2 });
    const ex = ReferenceExecutor.load(dir);
    expect(() => ex.step([{ seqId: 1, tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9], logits: "last" }])).toThrow(
      LimitError,
    );
    expect(() => ex.step([{ seqId: 1, tokens: [1, 2, 3, 4, 5, 6, 7, 8, 9], logits: "last" }])).toThrow(
      /max_seq_len 8/,
    );
    expect(() => ex.step([1, 2, 3].map((i) => ({ seqId: i, tokens: [1], logits: "last" as const })))).toThrow(
      /max_batch_size 2/,
    );
    expect(() => ex.step([{ seqId: 1, tokens: [9999], logits: "last" }])).toThrow(/outside the vocabulary/);
    expect(ex.step([{ seqId: 1, tokens: [1, 2], logits: "last" }]).get(1)![0].length).toBe(512);
  });
});

describe("tsllm-run", () => {
  it("--golden prints per-prompt and overall max |Δlogit| and passes at 1e-3 (fp32)", async () => {
    const dir = await buildFixture("gptj");
    const r = run([dir, "--device", "cpu", "--golden", path.join(TINY_GPTJ, "golden.safetensors")]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/prompt 0: max \|Δlogit\| /);
    expect(r.stdout).toMatch(/overall: max \|Δlogit\| .* \(tolerance 0\.001\)/);
  });

  it("--golden exits non-zero above the tolerance", async () => {
    const dir = await buildFixture("llama", { dtype: "bf16" });
    const r = run([
      dir,
      "--device",
      "cpu",
      "--golden",
      path.join(TINY_LLAMA, "golden.safetensors"),
      "--tolerance",
      "1e-6",
    ]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/^error: max \|Δlogit\| .* exceeds tolerance/m);
  });

  it("generates the golden greedy continuation from the prompt", async () => {
    const dir = await buildFixture("llama");
    const golden = (await import("../src/golden.ts")).readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
    const p = golden.prompts[2];
    const r = run([
      dir,
      "--device",
      "cpu",
      "--input-ids",
      p.inputIds.slice(0, p.promptLen).join(","),
      "--max-new-tokens",
      "6",
    ]);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe(p.inputIds.slice(p.promptLen, p.promptLen + 6).join(","));
  });

  it("sampling with the same seed repeats; another seed differs", async () => {
    const dir = await buildFixture("gptj");
    const args = [
      dir,
      "--device",
      "cpu",
      "--input-ids",
      "1,2,3",
      "--max-new-tokens",
      "12",
      "--temperature",
      "1.5",
      "--top-k",
      "50",
      "--top-p",
      "0.95",
    ];
    const a = run([...args, "--seed", "1"]).stdout;
    expect(run([...args, "--seed", "1"]).stdout).toBe(a);
    expect(run([...args, "--seed", "2"]).stdout).not.toBe(a);
  });
});

describe("the README's main command", () => {
  it("compiles the bundled default of every model file with no checkpoint", () => {
    for (const model of [LLAMA_MODEL, GPTJ_MODEL]) {
      const out = path.join(tmpDir(), "e");
      const r = spawnSync(
        process.execPath,
        [path.join(REPO, "bin/tsllm-compile.mjs"), model, "--sm", "90", "-o", out],
        { encoding: "utf8" },
      );
      expect(r.status, r.stderr).toBe(0);
      expect(fs.existsSync(path.join(out, "rank0.engine"))).toBe(true);
      expect(run([out, "--device", "cpu", "--input-ids", "1,2,3", "--max-new-tokens", "4"]).stdout).toMatch(
        /^\d+(,\d+){3}\n$/,
      );
    }
  });
});
