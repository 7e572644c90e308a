// OpenAI's seed through tsllm-serve with the openai client (src/executor/seed.ts): choice j of n samples with the
// u64 seed + j, exact past 2^53 (as numbers, seed + 1 and seed + 2 were one, and so were two of the choices); a
// negative seed is a seed like any other; one past ±(2^53 - 1), which JSON has already rounded, is a 400 naming it.
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildFixture } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

const BODY = { model: "tiny", prompt: [1, 7, 42], max_tokens: 12, temperature: 1.5, ignore_eos: true };
const IDS = { return_token_ids: true } as Record<string, unknown>;

describe("tsllm-serve: seed (openai client)", () => {
  let s: TestServer;
  beforeAll(async () => {
    s = await startServer(await buildFixture("llama"));
  });
  afterAll(async () => s?.close());

  const tokens = async (extra: Record<string, unknown>) =>
    (await s.client.completions.create({ ...BODY, ...IDS, ...extra } as never)).choices.map(
      (c) => (c as unknown as { token_ids: number[] }).token_ids,
    );

  it("n choices at a seed near 2^53 each sample their own seed + j; the first is the n = 1 request", async () => {
    const top = 2 ** 53 - 1;
    const [a, b, c] = await tokens({ seed: top, n: 3 });
    expect(b).not.toEqual(c);
    expect(a).not.toEqual(b);
    expect(await tokens({ seed: top })).toEqual([a]);
  });

  it("a negative seed repeats, and is not its 32-bit twin", async () => {
    const neg = await tokens({ seed: -7 });
    expect(await tokens({ seed: -7 })).toEqual(neg);
    expect(await tokens({ seed: 2 ** 32 - 7 })).not.toEqual(neg);
  });

  it("a seed past ±(2^53 - 1) (2^63 - 1 arrives as 2^63) or not an integer: 400 naming seed", async () => {
    for (const seed of [2 ** 63, -(2 ** 63), 2 ** 53, 1.5]) {
      const e = await s.client.completions.create({ ...BODY, seed }).then(
        () => null,
        (x: unknown) => x,
      );
      expect(e, String(seed)).toBeInstanceOf(OpenAI.BadRequestError);
      const b = e as InstanceType<typeof OpenAI.BadRequestError>;
      expect([b.status, b.param, (b.error as { message: string }).message]).toEqual([
        400,
        "seed",
        "seed: seed must be an integer from -(2^53 - 1) to 2^53 - 1",
      ]);
    }
  });
});
