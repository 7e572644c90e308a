// Fuzzing the golden reader (readGolden in src/golden.ts) with fast-check: golden files with prompts of
// random lengths and vocabularies load exactly; wrong dtypes and ranks, mismatched lengths, missing
// tensors, odd prompt_lens metadata and damaged bytes raise CheckpointError; never another exception,
// never a read past the end of the file.
import * as fs from "node:fs";
import * as path from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { CheckpointError } from "../../src/checkpoint/errors.ts";
import { type TensorToWrite, writeSafetensors } from "../../src/checkpoint/safetensors.ts";
import { readGolden } from "../../src/golden.ts";
import { goldenTensors, TINY_LLAMA } from "../fixtures.ts";
import { breathe, expectOurError, FUZZ_SEED, guardReads, removeScratch, report, scratch } from "./harness.ts";

const RUNS = 3500;

interface Prompt {
  ids: number[];
  vocab: number;
  promptLen: number;
}
const promptArb: fc.Arbitrary<Prompt> = fc
  .tuple(
    fc.array(fc.nat({ max: 1000 }), { minLength: 1, maxLength: 6 }),
    fc.integer({ min: 1, max: 8 }),
    fc.nat(),
  )
  .map(([ids, vocab, p]) => ({ ids, vocab, promptLen: 1 + (p % ids.length) }));

function tensors(ps: Prompt[]): Record<string, TensorToWrite> {
  return goldenTensors(
    ps.map((p, i) => ({
      ids: p.ids,
      shape: [p.ids.length, p.vocab],
      logits: Float32Array.from({ length: p.ids.length * p.vocab }, (_, k) => k * 0.25 - i),
    })),
  );
}

const wildShape = fc.oneof(
  fc.array(fc.integer({ min: 0, max: 6 }), { maxLength: 3 }),
  fc.constant([] as number[]),
  fc.array(fc.constantFrom(0, 1, 2, 3), { minLength: 3, maxLength: 3 }),
);
const DTYPES = ["I32", "F32", "F16", "I64", "U8", "BF16"] as const;

type Edit =
  | {
      kind: "dtype";
      i: number;
      which: "input_ids" | "logits";
      dtype: (typeof DTYPES)[number];
      shape: number[];
    }
  | { kind: "drop"; i: number; which: "input_ids" | "logits" }
  | { kind: "lens"; lens: string };
const editArb: fc.Arbitrary<Edit> = fc.oneof(
  fc.record({
    kind: fc.constant("dtype" as const),
    i: fc.nat({ max: 3 }),
    which: fc.constantFrom("input_ids" as const, "logits" as const),
    dtype: fc.constantFrom(...DTYPES),
    shape: wildShape,
  }),
  fc.record({
    kind: fc.constant("drop" as const),
    i: fc.nat({ max: 3 }),
    which: fc.constantFrom("input_ids" as const, "logits" as const),
  }),
  fc.record({
    kind: fc.constant("lens" as const),
    lens: fc.oneof(
      fc.string({ maxLength: 8 }),
      fc
        .array(fc.oneof(fc.integer({ min: -2, max: 9 }), fc.constantFrom(0.5, 1e300, Number.NaN)), {
          maxLength: 4,
        })
        .map((a) => a.join(",")),
    ),
  }),
);

describe("golden reader under fuzzing", () => {
  const dir = scratch("golden");
  const file = path.join(dir, "golden.safetensors");
  let cases = 0;
  let loaded = 0;
  const t0 = performance.now();
  afterAll(() => {
    report("golden", cases, loaded, (performance.now() - t0) / 1000);
    removeScratch(dir);
  });

  it("the fixtures' goldens load", () => {
    // A guard that the fuzz starts from the real format (../shared/fixtures/README.md).
    const g = readGolden(path.join(TINY_LLAMA, "golden.safetensors"));
    expect(g.prompts.length).toBeGreaterThan(0);
  });

  it(`${RUNS} generated goldens: load exactly or raise CheckpointError`, async () => {
    const guard = guardReads();
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.array(promptArb, { minLength: 0, maxLength: 3 }),
          fc.array(editArb, { maxLength: 2 }),
          fc.option(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 })), { nil: undefined }),
          async (ps, edits, flip) => {
            cases++;
            await breathe(cases);
            const t = tensors(ps);
            let lens: string | undefined = ps.map((p) => p.promptLen).join(",");
            for (const e of edits) {
              if (e.kind === "lens") lens = e.lens;
              else if (e.kind === "drop") delete t[`p${e.i}.${e.which}`];
              else {
                const n =
                  e.shape.reduce((a, b) => a * b, 1) *
                  (e.dtype === "I64"
                    ? 8
                    : e.dtype === "F16" || e.dtype === "BF16"
                      ? 2
                      : e.dtype === "U8"
                        ? 1
                        : 4);
                t[`p${e.i}.${e.which}`] = { dtype: e.dtype, shape: e.shape, data: new Uint8Array(n) };
              }
            }
            writeSafetensors(file, t, lens ? { prompt_lens: lens } : undefined);
            if (flip) {
              const b = fs.readFileSync(file);
              b[flip[0] % b.length] ^= flip[1];
              fs.writeFileSync(file, b);
            }
            const pristine = edits.length === 0 && !flip && ps.length > 0;
            try {
              const g = readGolden(file);
              for (const p of g.prompts) {
                expect(Number.isInteger(p.vocab) && p.vocab >= 1).toBe(true);
                expect(p.logits.length).toBe(p.inputIds.length * p.vocab);
                expect(
                  Number.isInteger(p.promptLen) && p.promptLen >= 1 && p.promptLen <= p.inputIds.length,
                ).toBe(true);
              }
              if (pristine) {
                expect(g.prompts.map((p) => [p.inputIds, p.vocab, p.promptLen])).toEqual(
                  ps.map((p) => [p.ids, p.vocab, p.promptLen]),
                );
                g.prompts.forEach((p, i) =>
                  expect(p.logits[p.logits.length - 1]).toBe((p.logits.length - 1) * 0.25 - i),
                );
              }
              loaded++;
            } catch (e) {
              if (pristine) throw e;
              expectOurError(e, [CheckpointError]);
            }
            expect(guard.violations).toEqual([]);
          },
        ),
        { seed: FUZZ_SEED, numRuns: RUNS },
      );
    } finally {
      guard.restore();
    }
  });
});
