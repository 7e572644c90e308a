// Fuzzing the Hugging Face config loader (the public parseHfConfig / loadHfConfig of src/models.ts) with
// fast-check: real configs (the fixtures' and the published ones in ../shared/configs) with fields
// deleted or replaced by hostile values (huge, negative, fractional, wrong types, odd rope settings),
// arbitrary JSON, and damaged bytes on disk. Each either loads into a config whose geometry is usable
// (positive integers, heads divisible) or raises ConfigError; never another exception.
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError } from "../../src/checkpoint/errors.ts";
import { modelFacts } from "../../src/dsl/model.ts";
import { loadHfConfig, parseHfConfig } from "../../src/models.ts";
import { FIXTURES, SHARED } from "../fixtures.ts";
import { breathe, expectOurError, FUZZ_SEED, guardReads, removeScratch, report, scratch } from "./harness.ts";

const RUNS_JSON = 7000;
const RUNS_BYTES = 1500;

const BASES: Record<string, unknown>[] = [
  ...["tiny-llama", "tiny-gptj", "tiny-qwen2", "tiny-mixtral"].map((d) =>
    path.join(FIXTURES, d, "config.json"),
  ),
  ...fs.readdirSync(path.join(SHARED, "configs")).map((f) => path.join(SHARED, "configs", f)),
].map((f) => JSON.parse(fs.readFileSync(f, "utf8")));

const wild = fc.oneof(
  fc.integer({ min: -2, max: 70000 }),
  fc.constantFrom(0, -1, 0.5, 1e300, 2 ** 53, 2 ** 31, Number.MAX_SAFE_INTEGER, 3, 7, 64, 4096),
  fc.double(),
  fc.string({ maxLength: 12 }),
  fc.constantFrom(
    "default",
    "linear",
    "llama3",
    "yarn",
    "dynamic",
    "longrope",
    "bfloat16",
    "float16",
    "silu",
    "gelu_new",
  ),
  fc.constant(null),
  fc.boolean(),
  fc.array(fc.integer({ min: -1, max: 10 }), { maxLength: 3 }),
  fc.dictionary(
    fc.constantFrom(
      "rope_type",
      "type",
      "factor",
      "rope_theta",
      "original_max_position_embeddings",
      "low_freq_factor",
      "high_freq_factor",
      "beta_fast",
      "beta_slow",
    ),
    fc.oneof(
      fc.double(),
      fc.integer({ min: -1, max: 70000 }),
      fc.string({ maxLength: 8 }),
      fc.constant(null),
    ),
  ),
);

type Edit = { key: string; value?: unknown; del?: boolean };
const editArb = (keys: string[]) =>
  fc.oneof(
    fc.record({ key: fc.constantFrom(...keys), value: wild }),
    fc.record({ key: fc.constantFrom(...keys), del: fc.constant(true) }),
    fc.record({
      key: fc.constantFrom(
        "rope_scaling",
        "rope_parameters",
        "head_dim",
        "sliding_window",
        "num_key_value_heads",
        "eos_token_id",
      ),
      value: wild,
    }),
  );

const allKeys = [...new Set(BASES.flatMap((b) => Object.keys(b)))];
const jsonCase = fc.oneof(
  {
    weight: 8,
    arbitrary: fc
      .tuple(fc.nat({ max: BASES.length - 1 }), fc.array(editArb(allKeys), { minLength: 1, maxLength: 4 }))
      .map(([i, edits]) => {
        const c: Record<string, unknown> = structuredClone(BASES[i]);
        for (const e of edits as Edit[]) {
          if (e.del) delete c[e.key];
          else c[e.key] = e.value;
        }
        return c as unknown;
      }),
  },
  { weight: 1, arbitrary: fc.jsonValue() },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.nat({ max: BASES.length - 1 }), fc.jsonValue())
      .map(([i, v]) => ({ ...BASES[i], architectures: v })),
  },
);

/** What a loaded config must satisfy for a build to be possible. */
function checkUsable(cfg: Awaited<ReturnType<typeof parseHfConfig>>): void {
  const f = modelFacts(cfg);
  for (const k of [
    "vocabSize",
    "numLayers",
    "numHeads",
    "numKvHeads",
    "headDim",
    "hiddenSize",
    "maxPositionEmbeddings",
  ] as const) {
    expect(Number.isSafeInteger(f[k]), `${k} = ${f[k]}`).toBe(true);
    expect(f[k], k).toBeGreaterThan(0);
  }
  expect(f.numHeads % f.numKvHeads).toBe(0);
}

describe("HF config loader under fuzzing", () => {
  const dir = scratch("config");
  let cases = 0;
  let loaded = 0;
  const t0 = performance.now();
  afterAll(() => {
    report("hf-config", cases, loaded, (performance.now() - t0) / 1000);
    removeScratch(dir);
  });

  it("every real base config of a bundled architecture loads (the fuzz starts from valid inputs)", async () => {
    let n = 0;
    for (const b of BASES.filter((b) => (b.architectures as string[])[0] !== "MixtralForCausalLM")) {
      checkUsable(await parseHfConfig(b, "config.json"));
      n++;
    }
    expect(n).toBeGreaterThanOrEqual(7);
  });

  it(`${RUNS_JSON} edited or arbitrary configs: load usable or raise ConfigError`, async () => {
    await fc.assert(
      fc.asyncProperty(jsonCase, async (json) => {
        cases++;
        await breathe(cases);
        try {
          checkUsable(await parseHfConfig(json, "config.json"));
          loaded++;
        } catch (e) {
          expectOurError(e, [ConfigError]);
        }
      }),
      { seed: FUZZ_SEED, numRuns: RUNS_JSON },
    );
  });

  it(`${RUNS_BYTES} damaged config.json files on disk: load usable or raise ConfigError`, async () => {
    const file = path.join(dir, "config.json");
    const guard = guardReads();
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.nat({ max: BASES.length - 1 }),
          fc.oneof(
            fc.nat().map((cut) => (b: Buffer) => b.subarray(0, cut % (b.length + 1))),
            fc
              .array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 3 })
              .map((flips) => (b: Buffer) => {
                const c = Buffer.from(b);
                for (const [at, x] of flips) c[at % c.length] ^= x;
                return c;
              }),
            fc.uint8Array({ maxLength: 32 }).map((junk) => (b: Buffer) => Buffer.concat([b, junk])),
          ),
          async (i, damage) => {
            cases++;
            await breathe(cases);
            fs.writeFileSync(file, damage(Buffer.from(JSON.stringify(BASES[i], null, 2))));
            try {
              checkUsable(await loadHfConfig(file));
              loaded++;
            } catch (e) {
              expectOurError(e, [ConfigError]);
            }
            expect(guard.violations).toEqual([]);
          },
        ),
        { seed: FUZZ_SEED, numRuns: RUNS_BYTES },
      );
    } finally {
      guard.restore();
    }
  });
});
