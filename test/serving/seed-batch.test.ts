// Sampling seeds through the batch manager on the CPU (src/executor/seed.ts): a seed past 2^32 gives a request the
// same tokens batched as alone, and other tokens than the seed 2^32 below it (the CPU took seed >>> 0, so the two
// were one); a seed no sampler can honour exactly is refused at submit, in one line naming it.
import { beforeAll, describe, expect, it } from "vitest";
import { openBatchManager } from "../../src/serving/open.ts";
import { type GenerationRequest, RequestRejectedError } from "../../src/serving/types.ts";
import { buildFixture } from "../fixtures.ts";

let dir: string;
beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 64, maxNumTokens: 64, maxBatchSize: 8 });
});

const req = (seed: number | bigint, prompt = [1, 7, 42]): GenerationRequest => ({
  promptIds: prompt,
  maxNewTokens: 12,
  ignoreEos: true,
  sampling: { temperature: 1.5, topK: 0, topP: 1, seed },
});

async function run(rs: GenerationRequest[]): Promise<number[][]> {
  const bm = await openBatchManager(dir, { device: "cpu" });
  try {
    return (await Promise.all(rs.map((r) => bm.submit(r).done))).map((r) => r.outputIds);
  } finally {
    await bm.shutdown();
  }
}

describe("sampling seeds through the batch manager (CPU)", () => {
  it("the same seed gives the same tokens batched or alone; seeds differing above bit 32 differ", async () => {
    const big = 2 ** 40 + 5;
    const [alone] = await run([req(big)]);
    const batched = await run([req(3, [5, 6]), req(big), req(-1, [9]), req(big, [2, 2, 2, 2])]);
    expect(batched[1]).toEqual(alone);
    expect(await run([req(2n ** 40n + 5n)])).toEqual([alone]);
    const [low] = await run([req(5)]);
    expect(alone).not.toEqual(low);
    const [minus1] = await run([req(-1)]);
    const [u32max] = await run([req(2 ** 32 - 1)]);
    expect(minus1).not.toEqual(u32max);
  });

  it("a seed past ±(2^53 - 1) or not an integer: refused at submit, naming the seed", async () => {
    const bm = await openBatchManager(dir, { device: "cpu" });
    try {
      for (const seed of [2 ** 53, -(2 ** 63), 0.5, 2n ** 64n]) {
        let e: unknown;
        try {
          bm.submit(req(seed));
        } catch (x) {
          e = x;
        }
        expect(e, String(seed)).toBeInstanceOf(RequestRejectedError);
        expect((e as RequestRejectedError).reason).toBe("invalid");
        expect((e as Error).message).toMatch(
          /^seed must (be an integer from -\(2\^53 - 1\) to 2\^53 - 1, got|fit in 64 bits)/,
        );
        expect((e as Error).message).not.toContain("\n");
      }
    } finally {
      await bm.shutdown();
    }
  });
});
