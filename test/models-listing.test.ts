// Which files of models/ src/models.ts takes as model files (TypeScript or JavaScript modules, not declaration
// files nor anything else), in name order whatever order the directory lists them. The directory listing and the
// model-file loader are stand-ins here (vi.mock), so that names models/ does not hold can be listed without
// touching the checkout; test/models.test.ts reads the real directory.
import * as path from "node:path";
import { expect, it, vi } from "vitest";

const LISTING = [
  "qwen2.ts",
  "README.md",
  "b.mts",
  "types.d.ts",
  "a.mjs",
  "notes.ts.bak",
  "c.js",
  "x.tsx",
  "d.cjs",
  "e.json",
  "Z.ts",
];

vi.mock("node:fs", async (importOriginal) => {
  const real = await importOriginal<typeof import("node:fs")>();
  const readdirSync = ((p: string, ...rest: unknown[]) =>
    path.basename(String(p)) === "models"
      ? [...LISTING]
      : (real.readdirSync as (...a: unknown[]) => unknown)(p, ...rest)) as typeof real.readdirSync;
  return { ...real, readdirSync, default: { ...real, readdirSync } };
});

vi.mock("../src/model-file.ts", () => ({
  loadModelFile: async (file: string) => ({
    architectures: [`Arch-${path.basename(file)}`],
    parseConfig: () => ({}),
    defaultConfig: {},
    forward: () => {},
  }),
}));

it("takes .ts / .mts / .js / .mjs files but not .d.ts or other names, sorted by name (code-unit order)", async () => {
  const { bundledModels, MODELS_DIR, supportedArchitectures } = await import("../src/models.ts");
  const ms = await bundledModels();
  const names = ["Z.ts", "a.mjs", "b.mts", "c.js", "qwen2.ts"];
  expect(ms.map((m) => m.file)).toEqual(names.map((n) => path.join(MODELS_DIR, n)));
  expect(await supportedArchitectures()).toEqual(names.map((n) => `Arch-${n}`));
});
