// openExecutor (tsllm-run --golden's executor): --device cuda without the native runtime is refused in one line
// naming the flag (it said only "native runtime not built: ..."), cpu and auto open the reference executor.
// CI and the CPU machine have no native build; the GPU suite (test-gpu/) covers the CUDA side.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openExecutor } from "../src/executor/open.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { NATIVE_NOT_BUILT, nativeAvailable } from "../src/native/binding.ts";
import { buildFixture } from "./fixtures.ts";

let dir: string;
beforeAll(async () => {
  dir = await buildFixture("llama", { maxSeqLen: 16, maxNumTokens: 16, maxBatchSize: 1 });
});
afterAll(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }));

describe.skipIf(nativeAvailable())("openExecutor without the native runtime", () => {
  it("--device cuda is refused in one line naming the flag", async () => {
    const e = await openExecutor(dir, { device: "cuda" }).then(
      () => null,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(Error);
    expect((e as Error).message).toBe(`--device cuda: ${NATIVE_NOT_BUILT}`);
  });

  it("cpu and auto open the reference executor", async () => {
    for (const device of ["cpu", "auto"]) {
      const ex = await openExecutor(dir, { device });
      expect(ex).toBeInstanceOf(ReferenceExecutor);
      expect(ex.vocabSize).toBe(512);
    }
  });
});
