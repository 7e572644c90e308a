// The native loader's integrity checks, on the CPU: native/tools/engine_check.cc runs the same header reader
// as tsllm_load (native/src/runtime/engine_file.cc, built here with the host C++ compiler, no CUDA), on valid
// engines (each must load) and on deliberately corrupted rank files (each must give its one-line error).
// The GPU suite (test-gpu/runtime.test.ts) loads the same corrupted files through tsllm_load.
import { spawnSync } from "node:child_process";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { readRankHeader } from "../src/engine/reader.ts";
import { writeChainToy } from "./chain-toy.ts";
import { buildFixture, MIXTRAL_MODEL, TINY_MIXTRAL, tmpDir } from "./fixtures.ts";
import { buildHostTool, cxx } from "./host-tool.ts";
import {
  CORRUPT_CASES,
  type CorruptCase,
  MOE_CORRUPT_CASES,
  QUANT_CORRUPT_CASES,
  writeCorruptRanks,
} from "./native-loader-cases.ts";

if (!cxx)
  console.warn("native-loader.test.ts: SKIPPED: no C++ compiler (c++, g++, clang++) to build engine_check");

let checker = "";
beforeAll(async () => {
  if (!cxx) return;
  checker = await buildHostTool("engine_check", ["engine_file.cc", "json.cc"]);
}, 300_000);

function check(files: string[]): string[] {
  const r = spawnSync(checker, files, { encoding: "utf8" });
  return r.stdout.trim().split("\n");
}

/** Each corrupted copy is refused with its case's one-line error naming the file. */
function expectRefused(cases: [CorruptCase, string][]): void {
  const out = check(cases.map(([, f]) => f));
  expect(out.length).toBe(cases.length);
  cases.forEach(([c, file], i) => {
    expect({ case: c.name, line: out[i] }).toEqual({ case: c.name, line: expect.stringMatching(c.error) });
    expect(out[i].startsWith(`error ${file}: `)).toBe(true);
  });
}

describe.skipIf(!cxx)("native loader integrity (engine_check, no GPU)", () => {
  it("loads the engines the compiler writes (fp16, bf16, tp 2, unfused, random weights)", async () => {
    const dirs = [
      await buildFixture("llama", { dtype: "fp16" }),
      await buildFixture("gptj", { dtype: "bf16" }),
      await buildFixture("llama", { dtype: "fp16", tp: 2 }),
      await buildFixture("llama", {
        dtype: "fp16",
        disablePasses: [
          "qkv-fusion",
          "gate-up-fusion",
          "attention-fusion",
          "epilogue-fusion",
          "add-norm-fusion",
        ],
      }),
    ];
    const files = dirs.flatMap((d) =>
      ["rank0.engine", ...(d === dirs[2] ? ["rank1.engine"] : [])].map((f) => path.join(d, f)),
    );
    const out = check(files);
    expect(out.length).toBe(5);
    for (const line of out) expect(line).toMatch(/^ok .*: \d+ nodes, \d+ weights, arena \d+$/);
  }, 120_000);

  it("loads an engine whose linears and norms carry folded elementwise chains (test/chain-toy.ts)", async () => {
    const dir = tmpDir("tsllm-chain-check-");
    const files = writeChainToy(dir);
    const out = path.join(dir, "engine");
    await compileEngine({ ...files, randomWeights: true, sm: 90, dtype: "fp16", out, log: () => {} });
    const header = JSON.stringify(readRankHeader(path.join(out, "rank0.engine")).header.nodes);
    expect(header).toContain('"post":{"ops":["softcap","scale"],"args":[3,2]}');
    expect(header).toContain('"pre":{"ops":["sigmoid"],"args":[0]}');
    expect(check([path.join(out, "rank0.engine")])[0]).toMatch(/^ok .*: \d+ nodes, \d+ weights, arena \d+$/);
  }, 120_000);

  it(`refuses ${CORRUPT_CASES.length} kinds of corrupted rank file, each with its own one-line error`, async () => {
    const engine = await buildFixture("llama", { dtype: "fp16" });
    const cases = writeCorruptRanks(path.join(engine, "rank0.engine"), tmpDir("tsllm-corrupt-"));
    expectRefused(cases);
  }, 120_000);

  it("loads quantised and FP8-KV engines; names what is wrong in a quant_linear or an FP8-KV attention node", async () => {
    const dirs = [
      await buildFixture("llama", { dtype: "fp16", quant: "fp8" }),
      await buildFixture("llama", { dtype: "fp16", quant: "int8-wo" }),
      await buildFixture("gptj", { dtype: "bf16", quant: "int4-wo", groupSize: 128 }),
      await buildFixture("llama", { dtype: "fp16", kvCacheDtype: "fp8" }),
    ];
    for (const line of check(dirs.map((d) => path.join(d, "rank0.engine"))))
      expect(line).toMatch(/^ok .*: \d+ nodes, \d+ weights, arena \d+$/);
    const engine = await buildFixture("llama", {
      dtype: "fp16",
      quant: "int4-wo",
      groupSize: 32,
      kvCacheDtype: "fp8",
    });
    const cases = writeCorruptRanks(
      path.join(engine, "rank0.engine"),
      tmpDir("tsllm-corrupt-q-"),
      QUANT_CORRUPT_CASES,
    );
    expectRefused(cases);
  }, 120_000);

  it("loads tiny-mixtral (fp16, bf16, tp 2 with 2 experts per rank); names what is wrong in a moe node", async () => {
    const dirs: string[] = [];
    for (const extra of [
      { dtype: "fp16" },
      { dtype: "bf16" },
      { dtype: "fp16", tp: 2, moeEpSize: 2 },
    ] as const) {
      const out = path.join(tmpDir(), "engine");
      await compileEngine({
        modelFile: MIXTRAL_MODEL,
        checkpoint: TINY_MIXTRAL,
        sm: 90,
        maxNumTokens: 256,
        maxSeqLen: 256,
        maxBatchSize: 8,
        out,
        ...extra,
      });
      dirs.push(out);
    }
    const ranks = [...dirs.map((d) => path.join(d, "rank0.engine")), path.join(dirs[2], "rank1.engine")];
    const lines = check(ranks);
    expect(lines.length).toBe(4);
    for (const line of lines) expect(line).toMatch(/^ok .*: \d+ nodes, \d+ weights, arena \d+$/);
    const cases = writeCorruptRanks(
      path.join(dirs[0], "rank0.engine"),
      tmpDir("tsllm-corrupt-moe-"),
      MOE_CORRUPT_CASES,
    );
    expectRefused(cases);
  }, 120_000);
});
