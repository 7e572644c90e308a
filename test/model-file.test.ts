// src/model-file.ts, in-process: model files written here to a temporary folder outside the repository
// (no package.json, importing the DSL as "tsllm"), as .ts, .js and .mjs, loaded or refused with their
// one-line messages (the file named as the caller named it, errors at the model file's line); a
// parseConfig() that throws, through compileEngine; and the stack-frame and syntax-error parsing
// behind those lines, on hand-written stacks.
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { describeError, loadModelFile, modelFileFrame } from "../src/model-file.ts";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-model-file-"));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Writes a file into the temp folder; returns its absolute path. */
function write(name: string, text: string): string {
  const file = path.join(dir, name);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, text);
  return file;
}

/** "line:column" (1-based) of the first occurrence of `needle` in `text`. */
function lineCol(text: string, needle: string): string {
  const i = text.indexOf(needle);
  if (i < 0) throw new Error(`"${needle}" is not in the text`);
  const before = text.slice(0, i).split("\n");
  return `${before.length}:${before[before.length - 1].length + 1}`;
}

/** The same as esbuild writes it in a syntax error: its columns count from 0. */
function lineCol0(text: string, needle: string): string {
  const [line, col] = lineCol(text, needle).split(":");
  return `${line}:${Number(col) - 1}`;
}

/** The message a promise is rejected with (fails the test if it resolves). */
async function refusal(p: Promise<unknown>): Promise<string> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(Error);
  return (e as Error).message;
}

const model = (arch: string, fields = "") => `import { defineModel, stack } from "tsllm";

export default defineModel({
  architectures: ["${arch}"],
  parseConfig(json, source) {
    return { vocabSize: 8, numLayers: stack(2, () => (x) => x).length, numHeads: 1, headDim: 4, hiddenSize: 4, maxPositionEmbeddings: 16 };
  },
  defaultConfig: { architectures: ["${arch}"] },
  forward(m, cfg) {},${fields}
});
`;

const EXPORT_LINE = "must default-export defineModel({ architectures, parseConfig, defaultConfig, forward })";

describe("loadModelFile: a model file from a folder outside the repository", () => {
  for (const ext of ["ts", "js", "mjs"])
    it(`loads a .${ext} file (no package.json nearby), its "tsllm" import resolved to the DSL`, async () => {
      expect(fs.existsSync(path.join(dir, "package.json"))).toBe(false);
      const file = write(`ok-${ext}.${ext}`, model(`Ok${ext}ForCausalLM`));
      const def = await loadModelFile(file);
      expect(def.architectures).toEqual([`Ok${ext}ForCausalLM`]);
      expect(def.defaultConfig).toEqual({ architectures: [`Ok${ext}ForCausalLM`] });
      expect(typeof def.forward).toBe("function");
      // stack() came from "tsllm": two layers.
      expect(def.parseConfig({}, "c.json").numLayers).toBe(2);
    });

  it("named relative to the working directory, it is loaded and named in errors as given", async () => {
    const file = write("rel/ok.ts", model("RelForCausalLM"));
    const rel = path.relative(process.cwd(), file);
    expect(path.isAbsolute(rel)).toBe(false);
    expect((await loadModelFile(rel)).architectures).toEqual(["RelForCausalLM"]);
    const text = `import { defineModel } from "tsllm";\n\n  throw new Error("no weights here");\n`;
    const bad = path.relative(process.cwd(), write("rel/throws.ts", text));
    expect(await refusal(loadModelFile(bad))).toBe(
      `${bad}: cannot load model file: no weights here (at ${bad}:${lineCol(text, "new Error")})`,
    );
  });

  it("a file that does not exist: 'model file not found'", async () => {
    const missing = path.join(dir, "nowhere", "model.ts");
    expect(await refusal(loadModelFile(missing))).toBe(`${missing}: model file not found`);
  });

  for (const [what, text] of [
    ["no default export", `import { defineModel } from "tsllm";\nexport const model = 1;\n`],
    ["a default export of null", "export default null;\n"],
    [
      "a forward that is not a function",
      model("NoFwdForCausalLM").replace("forward(m, cfg) {},", 'forward: "yes",'),
    ],
    ["no forward", model("NoFwdForCausalLM").replace("forward(m, cfg) {},", "")],
    ["architectures that are not an array", model("X").replace('architectures: ["X"]', 'architectures: "X"')],
  ] as const)
    for (const ext of ["ts", "mjs"])
      it(`${what} (.${ext}): refused with the defineModel line`, async () => {
        const file = write(`${what.replaceAll(" ", "-")}.${ext}`, text);
        expect(await refusal(loadModelFile(file))).toBe(`${file}: ${EXPORT_LINE}`);
      });

  it("an error thrown while the file loads names the file's line and column", async () => {
    const text = `import { defineModel } from "tsllm";\n\nconst n = 1;\n    throw new Error("no weights here\\nsecond line");\nexport default n;\n`;
    const file = write("throws.mjs", text);
    expect(await refusal(loadModelFile(file))).toBe(
      `${file}: cannot load model file: no weights here (at ${file}:${lineCol(text, "new Error")})`,
    );
  });

  it("a thrown string is its own message, with no line", async () => {
    const file = write("string.js", `throw "a string";\n`);
    expect(await refusal(loadModelFile(file))).toBe(`${file}: cannot load model file: a string`);
  });

  it("a syntax error: file:line:column: esbuild's message (esbuild's 0-based column, as tsx prints it)", async () => {
    const text = `import { defineModel } from "tsllm";\nexport default defineModel({ architectures: [["A"], });\n`;
    const file = write("syntax.ts", text);
    expect(await refusal(loadModelFile(file))).toBe(
      `${file}: cannot load model file: ${file}:${lineCol0(text, "});")}: Unexpected "}"`,
    );
  });

  it("a syntax error in a file the model file imports names that file", async () => {
    const helper = write("helpers/bad.ts", "export const h = {{;\n");
    const file = write("uses-bad-helper.ts", `import { h } from "./helpers/bad.ts";\nexport default h;\n`);
    expect(await refusal(loadModelFile(file))).toBe(
      `${file}: cannot load model file: ${helper}:1:18: Expected identifier but found "{"`,
    );
  });
});

describe("the model folder's module hooks, seen by Node's own loader", () => {
  // vitest loads the model files above through its own module runner; Node's loader (what tsllm-compile
  // uses) is reached from a CommonJS file, whose import() is Node's.
  const helper = write("native-import.cjs", "module.exports = (url) => import(url);\n");
  const nativeImport = createRequire(import.meta.url)(helper) as (
    url: string,
  ) => Promise<{ default: unknown }>;
  /** Runs `fn` in a folder of its own (the model files above registered all of `dir`), removed after. */
  async function inFolder(
    fn: (
      put: (rel: string, text: string) => string,
      importFile: (rel: string) => Promise<{ default: unknown }>,
    ) => Promise<void>,
  ): Promise<void> {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "tsllm-model-hooks-"));
    try {
      await fn(
        (rel, text) => {
          fs.mkdirSync(path.dirname(path.join(root, rel)), { recursive: true });
          fs.writeFileSync(path.join(root, rel), text);
          return path.join(root, rel);
        },
        (rel) => nativeImport(pathToFileURL(path.join(root, rel)).href),
      );
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  }
  const kinds = [
    "hooks/m/kind.js",
    "hooks/m/sub/kind.js",
    "hooks/m-2/kind.js",
    "hooks/m/node_modules/x/kind.js",
  ];

  it("after loading hooks/m/model.mjs: .js files in its folder and below are ES modules, elsewhere CommonJS", () =>
    inFolder(async (put, importFile) => {
      // A file with no import or export: Node makes it CommonJS (no package.json says otherwise) unless a hook
      // says "module"; the file records which by whether it sees CommonJS's require.
      for (const f of kinds) put(f, `globalThis[${JSON.stringify(`tsllm-test:${f}`)}] = typeof require;\n`);
      await loadModelFile(put("hooks/m/model.mjs", "export default { architectures: [], forward() {} };\n"));
      const seen: Record<string, unknown> = {};
      for (const f of kinds) {
        await importFile(f);
        seen[f] = (globalThis as Record<string, unknown>)[`tsllm-test:${f}`];
        delete (globalThis as Record<string, unknown>)[`tsllm-test:${f}`];
      }
      expect(seen).toEqual({
        "hooks/m/kind.js": "undefined",
        "hooks/m/sub/kind.js": "undefined",
        // A sibling folder whose name starts with the model folder's is not the model folder.
        "hooks/m-2/kind.js": "function",
        "hooks/m/node_modules/x/kind.js": "function",
      });
    }));

  it('"tsllm" resolves to this package\'s DSL entry', () =>
    inFolder(async (put, importFile) => {
      put("hooks/r/where.mjs", 'export default import.meta.resolve("tsllm");\n');
      await loadModelFile(put("hooks/r/model.mjs", "export default { architectures: [], forward() {} };\n"));
      expect((await importFile("hooks/r/where.mjs")).default).toBe(
        new URL("../src/dsl/index.ts", import.meta.url).href,
      );
    }));
});

describe("compileEngine: a model file's parseConfig() that throws", () => {
  it("is one line naming the file's line, and writes nothing", async () => {
    const text = model("PcForCausalLM").replace(
      "parseConfig(json, source) {\n",
      'parseConfig(json, source) {\n    throw new Error("width must be even");\n',
    );
    const file = write("parse-config.ts", text);
    const out = path.join(dir, "pc-engine");
    expect(await refusal(compileEngine({ modelFile: file, sm: 90, out }))).toBe(
      `${file}: parseConfig(): width must be even (at ${file}:${lineCol(text, "new Error")})`,
    );
    expect(fs.existsSync(out)).toBe(false);
  });
});

describe("modelFileFrame: the first stack frame inside the model file", () => {
  const file = "/models/m.ts";
  const url = pathToFileURL(file).href;
  it("as file:line:column of the first frame there, given a path or a file URL, with or without parentheses", () => {
    const stack = [
      "Error: boom",
      "    at inner (/work/lib/layers.ts:10:5)",
      `    at forward (${url}:7:13)`,
      `    at ${file}:9:2`,
    ].join("\n");
    expect(modelFileFrame(stack, file)).toBe("/models/m.ts:7:13");
    expect(modelFileFrame(stack, file, "m.ts")).toBe("m.ts:7:13");
    expect(modelFileFrame(`Error: x\n    at ${file}:9:2`, file, "m.ts")).toBe("m.ts:9:2");
    expect(modelFileFrame(`Error: x\n    at f (${file}:3:4)  `, file, "m.ts")).toBe("m.ts:3:4");
  });
  it("undefined without a stack or without a frame in the file", () => {
    expect(modelFileFrame(undefined, file)).toBeUndefined();
    expect(modelFileFrame("", file)).toBeUndefined();
    expect(
      modelFileFrame("Error: x\n    at f (/models/m.tsx:1:2)\n    at /models/other.ts:3:4", file),
    ).toBeUndefined();
    // A message line that names the file mid-text is no frame: a frame ends with its location.
    expect(
      modelFileFrame(`Error: see ${file}:3:4 for the layer\n    at g (/lib/x.ts:1:1)`, file),
    ).toBeUndefined();
    // A frame whose text merely ends like the file's does not count: the whole path must match.
    expect(modelFileFrame("Error: x\n    at f (/old/models/m.ts:1:2)", file)).toBeUndefined();
  });
});

describe("describeError: one line", () => {
  const file = "/models/m.ts";
  it("a syntax error in the model file as shown:line:column: message", () => {
    const e = new Error(`Transform failed with 1 error:\n${file}:4:2: ERROR: Unexpected "}"\nmore`);
    expect(describeError(e, file, "m.ts")).toBe('m.ts:4:2: Unexpected "}"');
    const two = new Error(`Transform failed with 2 errors:\n${file}:1:1: ERROR: a\n${file}:2:2: ERROR: b`);
    expect(describeError(two, file, "m.ts")).toBe("m.ts:1:1: a");
    expect(describeError(two, file)).toBe(`${file}:1:1: a`);
  });
  it("lines and error counts of more than one digit", () => {
    const e = new Error(
      `Transform failed with 12 errors:\n${file}:104:21: ERROR: Unexpected "}"\n${file}:110:2: ERROR: b`,
    );
    expect(describeError(e, file, "m.ts")).toBe('m.ts:104:21: Unexpected "}"');
  });
  it("only esbuild's header, as the whole first line, marks a syntax error", () => {
    const location = `\n${file}:4:2: ERROR: x`;
    for (const first of [
      "Error: Transform failed with 1 error:",
      "Transform failed with 1 error: see below",
    ]) {
      const e = new Error(first + location);
      e.stack = "";
      expect(describeError(e, file)).toBe(first);
    }
  });
  it("a syntax error elsewhere keeps that file's name", () => {
    const e = new Error("Transform failed with 1 error:\n/lib/x.ts:4:2: ERROR: oops");
    expect(describeError(e, file, "m.ts")).toBe("/lib/x.ts:4:2: oops");
  });
  it("anything else: its first line, plus the model file's frame when the stack has one", () => {
    const e = new Error("bad width\nsecond line");
    e.stack = `Error: bad width\n    at g (/lib/x.ts:1:1)\n    at f (${file}:12:7)`;
    expect(describeError(e, file, "m.ts")).toBe("bad width (at m.ts:12:7)");
    e.stack = "Error: bad width\n    at g (/lib/x.ts:1:1)";
    expect(describeError(e, file, "m.ts")).toBe("bad width");
    // Not a transform failure: a first line like it without the location line, or a different header.
    expect(describeError(new Error("Transform failed with 1 error:"), file)).toBe(
      "Transform failed with 1 error:",
    );
    const loose = new Error(`Transform failed with 1 errors here:\n${file}:4:2: ERROR: x`);
    loose.stack = "";
    expect(describeError(loose, file)).toBe("Transform failed with 1 errors here:");
    const wrong = new Error(`Transform failed with 1 error:\n${file}:4:2: WARNING: x`);
    wrong.stack = "";
    expect(describeError(wrong, file)).toBe("Transform failed with 1 error:");
  });
  it("a thrown non-Error: its string form", () => {
    expect(describeError("plain", file)).toBe("plain");
    expect(describeError(null, file)).toBe("null");
    expect(describeError(undefined, file)).toBe("undefined");
    expect(describeError(42, file)).toBe("42");
  });
});
