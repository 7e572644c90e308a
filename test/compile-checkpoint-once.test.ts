// A build reads each checkpoint header once: with a config.json naming no dtype, the dtype comes from the first
// float weight of the checkpoint the build then reads its weights from (it was opened, and every shard's header
// parsed, twice). Counted through openSafetensors, which opens a file and parses its header.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it, vi } from "vitest";
import { buildFixture, TINY_LLAMA, tmpDir } from "./fixtures.ts";

const opened = vi.hoisted(() => [] as string[]);
vi.mock("../src/checkpoint/safetensors.ts", async (importOriginal) => {
  const m = await importOriginal<typeof import("../src/checkpoint/safetensors.ts")>();
  return {
    ...m,
    openSafetensors: (p: string) => {
      opened.push(path.basename(p));
      return m.openSafetensors(p);
    },
  };
});

/** tiny-llama's checkpoint (linked) under a config.json with `edit` applied. */
function checkpoint(edit: (cfg: Record<string, unknown>) => void): string {
  const dir = tmpDir();
  for (const f of fs.readdirSync(TINY_LLAMA))
    if (f !== "config.json") fs.symlinkSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  const cfg = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "config.json"), "utf8"));
  edit(cfg);
  fs.writeFileSync(path.join(dir, "config.json"), JSON.stringify(cfg));
  return dir;
}

const engineDtype = (engine: string) =>
  JSON.parse(fs.readFileSync(path.join(engine, "config.json"), "utf8")).build.dtype;

describe("tsllm-compile --checkpoint opens the checkpoint once", () => {
  it("config.json naming no dtype: the weights' bf16, from one open of model.safetensors", async () => {
    const dir = checkpoint((c) => {
      delete c.dtype;
      delete c.torch_dtype;
    });
    opened.length = 0;
    const engine = await buildFixture("llama", { checkpoint: dir, dtype: "auto" });
    expect(opened).toEqual(["model.safetensors"]);
    expect(engineDtype(engine)).toBe("bf16");
  });

  it("config.json naming its dtype: one open as well, and the same engine dtype", async () => {
    const dir = checkpoint(() => {});
    opened.length = 0;
    const engine = await buildFixture("llama", { checkpoint: dir, dtype: "auto" });
    expect(opened).toEqual(["model.safetensors"]);
    expect(engineDtype(engine)).toBe("bf16");
  });
});
