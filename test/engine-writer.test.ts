// The engine writer (src/engine/writer.ts) through an in-process build of tiny-llama: progress as bytes
// reach the disk, the files written beside the ranks, --force and the build's inputs passed on to the
// output folder, and a build that fails part way leaving the old engine as it was and nothing behind.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { type CompileOptions, compileEngine } from "../src/compile.ts";
import { LLAMA_MODEL, snapshot, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const build = (out: string, extra: Partial<CompileOptions> = {}) =>
  compileEngine({ modelFile: LLAMA_MODEL, checkpoint: TINY_LLAMA, sm: 90, dtype: "fp32", out, ...extra });

const openFds = () => fs.readdirSync("/proc/self/fd").length;

describe("writeEngine", () => {
  // tiny-llama's rank file (2 MB) is written in one batch, so one report: the header's bytes put it past the
  // total, where it is capped.
  it("reports progress up to the weights' total, rising, with the weight being made", async () => {
    const out = path.join(tmpDir(), "eng");
    const calls: [number, number, string][] = [];
    const { config } = await build(out, { onProgress: (d, t, n) => calls.push([d, t, n]) });
    const rank = JSON.parse(
      fs
        .readFileSync(path.join(out, "rank0.engine"))
        .subarray(24, 24 + Number(fs.readFileSync(path.join(out, "rank0.engine")).readBigUInt64LE(16)))
        .toString(),
    ) as { weights: { nbytes: number }[]; values: { name: string }[] };
    const total = rank.weights.reduce((a, w) => a + w.nbytes, 0);
    expect(total).toBeGreaterThan(0);
    expect(calls.length).toBeGreaterThan(0);
    for (const [, t] of calls) expect(t).toBe(total);
    for (let i = 1; i < calls.length; i++) expect(calls[i][0]).toBeGreaterThanOrEqual(calls[i - 1][0]);
    expect(calls[0][0]).toBeGreaterThan(0);
    // Header bytes count too, so the last report is capped at the total.
    expect(calls.at(-1)![0]).toBe(total);
    expect(config.ranks[0].bytes).toBeGreaterThan(total);
    const names = new Set(rank.values.map((v) => v.name));
    for (const [, , n] of calls) expect(names.has(n)).toBe(true);
  });

  it("writes the report and the checkpoint's tokenizer files beside the ranks, named in config.json", async () => {
    const out = path.join(tmpDir(), "eng");
    const { config } = await build(out);
    const onDisk = JSON.parse(fs.readFileSync(path.join(out, "config.json"), "utf8"));
    expect(onDisk).toEqual(JSON.parse(JSON.stringify(config)));
    expect(onDisk.tokenizer.files).toContain("tokenizer.json");
    for (const f of onDisk.tokenizer.files as string[])
      expect(fs.readFileSync(path.join(out, f)).equals(fs.readFileSync(path.join(TINY_LLAMA, f)))).toBe(true);
    expect(fs.readdirSync(out).sort()).toEqual(
      ["config.json", "rank0.engine", "report.html", "report.json", ...onDisk.tokenizer.files].sort(),
    );
  });

  it("--force replaces a folder that is not an engine; the build's inputs may not be inside the output", async () => {
    const box = tmpDir();
    const data = path.join(box, "data");
    fs.mkdirSync(data);
    fs.writeFileSync(path.join(data, "train.csv"), "a,b\n");
    await expect(build(data)).rejects.toThrow(/is a folder with files in it that is not a tsllm engine/);
    await build(data, { force: true });
    expect(fs.existsSync(path.join(data, "rank0.engine"))).toBe(true);
    expect(fs.existsSync(path.join(data, "train.csv"))).toBe(false);
    const ck = path.join(box, "ck");
    fs.cpSync(TINY_LLAMA, ck, { recursive: true });
    const before = snapshot(box);
    await expect(build(ck, { checkpoint: ck, force: true })).rejects.toThrow(
      /contains .*ck, an input of this build/,
    );
    expect(snapshot(box)).toEqual(before);
  });

  it("a build that fails part way leaves the old engine as it was, no temporary folder and no open file", async () => {
    const box = tmpDir();
    const out = path.join(box, "eng");
    await build(out);
    const before = snapshot(box);
    const fds = openFds();
    const fail = () => {
      throw new Error("disk went away");
    };
    await expect(build(out, { seed: 5, onProgress: fail })).rejects.toThrow(/rank0\.engine: disk went away/);
    expect(snapshot(box)).toEqual(before);
    expect(openFds()).toBe(fds);
  });

  it("a build leaves no file open (checkpoint and rank files closed)", async () => {
    const out = path.join(tmpDir(), "eng");
    const fds = openFds();
    await build(out);
    expect(openFds()).toBe(fds);
  });
});
