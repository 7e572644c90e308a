// openBatchManager (src/serving/open.ts) on the tiny-llama engine: runtime limits refused in one line with the
// numbers before anything loads; the limits, policy, KV pool, step overlap, eos ids and load options it hands on;
// --device cuda without the native runtime; and the manager's greedy tokens equal to the transformers goldens.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openEngine } from "../../src/engine/reader.ts";
import { LimitError } from "../../src/executor/types.ts";
import { readGolden } from "../../src/golden.ts";
import { NATIVE_NOT_BUILT } from "../../src/native/binding.ts";
import { type OpenBatchOptions, openBatchManager } from "../../src/serving/open.ts";
import { buildFixture, corruptLastWeightByte, TINY_LLAMA } from "../fixtures.ts";

let dir: string;
/** The same engine with one weight byte changed (the rank file's last byte): loads only with verify: false. */
let corrupt: string;
const folders: string[] = [];

beforeAll(async () => {
  const o = { maxSeqLen: 64, maxNumTokens: 48, maxBatchSize: 4, tokensPerBlock: 8 };
  dir = await buildFixture("llama", o);
  corrupt = await buildFixture("llama", o);
  folders.push(path.dirname(dir), path.dirname(corrupt));
  corruptLastWeightByte(corrupt, openEngine(corrupt).config.ranks[0].file);
});
afterAll(() => {
  for (const f of folders) fs.rmSync(f, { recursive: true, force: true });
});

/** The LimitError openBatchManager refuses `o` with (one line, of that class). */
async function refusal(o: OpenBatchOptions, d = corrupt): Promise<string> {
  const e = await openBatchManager(d, o).then(
    (bm) => {
      void bm.shutdown();
      return null;
    },
    (e: unknown) => e,
  );
  expect(e, JSON.stringify(o)).toBeInstanceOf(LimitError);
  expect((e as Error).name).toBe("LimitError");
  expect((e as Error).message).not.toContain("\n");
  return (e as Error).message;
}

describe("openBatchManager", () => {
  it("refuses --max-seq-len over the model's max_position_embeddings (256) before loading", async () => {
    // The corrupt engine would fail its content hash if it were loaded: the refusal comes first.
    expect(await refusal({ device: "cpu", maxSeqLen: 257 })).toBe(
      "--max-seq-len 257 exceeds the model's max_position_embeddings 256",
    );
    expect(await refusal({ device: "cpu", maxSeqLen: Number.POSITIVE_INFINITY })).toBe(
      "--max-seq-len Infinity exceeds the model's max_position_embeddings 256",
    );
    // 256 itself is allowed (past the build's 64: the CPU executor re-plans).
    const bm = await openBatchManager(dir, { device: "cpu", maxSeqLen: 256 });
    try {
      expect(bm.limits.maxSeqLen).toBe(256);
    } finally {
      await bm.shutdown();
    }
  });

  it("refuses a limit that is not a positive integer, naming the flag and the value", async () => {
    const flags = {
      maxBatchSize: "--max-batch-size",
      maxNumTokens: "--max-num-tokens",
      maxSeqLen: "--max-seq-len",
    };
    for (const [k, flag] of Object.entries(flags))
      for (const v of [0, -1, 1.5, Number.NaN, -Number.POSITIVE_INFINITY])
        expect(await refusal({ device: "cpu", [k]: v })).toBe(`${flag} must be a positive integer, got ${v}`);
    for (const v of [Number.POSITIVE_INFINITY, 2.5])
      for (const k of ["maxBatchSize", "maxNumTokens"])
        expect(await refusal({ [k]: v })).toBe(
          `${flags[k as "maxBatchSize"]} must be a positive integer, got ${v}`,
        );
  });

  it("runs under the engine's limits by default, else the ones given; hands on policy, KV pool, overlap, eos ids", async () => {
    const def = await openBatchManager(dir, { device: "cpu" });
    try {
      expect(def.limits).toMatchObject({
        maxBatchSize: 4,
        maxNumTokens: 48,
        maxSeqLen: 64,
        tokensPerBlock: 8,
      });
      // The CPU pool holds max_batch_size full sequences: 4 x 64 / 8.
      expect(def.limits.kvBlocksTotal).toBe(32);
      expect(def.policy).toBe("guaranteed_no_evict");
      // generation_config.json's eos ids (508, 511), not config.json's (2).
      expect(def.eosTokenIds).toEqual([508, 511]);
      expect(def.backendInfo.device).toBe("cpu");
      expect((def as unknown as { depth: number }).depth).toBe(2);
    } finally {
      await def.shutdown();
    }
    const bm = await openBatchManager(dir, {
      device: "cpu",
      maxBatchSize: 2,
      maxNumTokens: 16,
      maxSeqLen: 32,
      kvBlocks: 5,
      policy: "max_utilization",
      overlap: false,
    });
    try {
      expect(bm.limits).toMatchObject({ maxBatchSize: 2, maxNumTokens: 16, maxSeqLen: 32, kvBlocksTotal: 5 });
      expect(bm.policy).toBe("max_utilization");
      expect((bm as unknown as { depth: number }).depth).toBe(1);
    } finally {
      await bm.shutdown();
    }
  });

  it("--device cuda without the native runtime is refused in one line saying so; auto falls back to the CPU", async () => {
    const e = await openBatchManager(corrupt, { device: "cuda" }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).toBe(`--device cuda: ${NATIVE_NOT_BUILT}`);
    for (const device of ["auto", undefined] as const) {
      const bm = await openBatchManager(dir, { device });
      try {
        expect(bm.backendInfo.device).toBe("cpu");
      } finally {
        await bm.shutdown();
      }
    }
  });

  it("checks the rank file's content hash unless verify is false; reports the bytes it reads", async () => {
    await expect(openBatchManager(corrupt, { device: "cpu" })).rejects.toThrow(/hash/);
    const seen: [number, number][] = [];
    const bm = await openBatchManager(corrupt, {
      device: "cpu",
      verify: false,
      onLoadBytes: (done, total) => seen.push([done, total]),
    });
    await bm.shutdown();
    const bytes = openEngine(corrupt).config.ranks[0].bytes;
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toEqual([bytes, bytes]);
  });

  it("greedy requests equal the transformers goldens' continuations", async () => {
    const golden = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
    const bm = await openBatchManager(dir);
    try {
      const rs = await Promise.all(
        golden.prompts.map(
          (p) =>
            bm.submit({
              promptIds: p.inputIds.slice(0, p.promptLen),
              maxNewTokens: p.inputIds.length - p.promptLen,
              ignoreEos: true,
            }).done,
        ),
      );
      expect(rs.map((r) => r.outputIds)).toEqual(golden.prompts.map((p) => p.inputIds.slice(p.promptLen)));
    } finally {
      await bm.shutdown();
    }
  });
});
