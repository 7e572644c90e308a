// checkOutputTarget and OutputDir (src/engine/output-dir.ts) called in-process, in a sandbox folder:
// what each kind of target is taken for, the exact refusals, and what commit / discard / a signal leave
// on disk. test/output-dir.test.ts tries the same rules through the CLI, in child processes.
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { checkOutputTarget, OutputDir, OutputDirError, yieldToSignals } from "../src/engine/output-dir.ts";
import { snapshot, tmpDir } from "./fixtures.ts";
import { thrown } from "./thrown.ts";

let box: string;
let home: string | undefined;

beforeEach(() => {
  box = tmpDir("tsllm-outapi-");
  home = process.env.HOME;
});

afterEach(() => {
  if (home === undefined) delete process.env.HOME;
  else process.env.HOME = home;
  vi.restoreAllMocks();
});

/** The OutputDirError `f` throws (failing if it throws something else or nothing). */
const errorOf = (f: () => unknown): OutputDirError => thrown(f, OutputDirError);

/** `f` throws exactly `message` and the sandbox is as it was. */
function refused(f: () => unknown, message: string) {
  const before = snapshot(box);
  expect(errorOf(f).message).toBe(message);
  expect(snapshot(box)).toEqual(before);
}

const NOT_OURS = "not replacing it (choose another path, or --force)";
const write = (p: string, text = "x") => {
  fs.mkdirSync(path.dirname(p), { recursive: true });
  fs.writeFileSync(p, text);
};
/** An engine folder as the writer leaves it: config.json naming its rank files, and those files. */
function engineDir(dir: string, cfg: Record<string, unknown> = {}, files = ["rank0.engine"]) {
  write(
    path.join(dir, "config.json"),
    JSON.stringify({ format_version: 1, build: {}, ranks: files.map((file) => ({ file })), ...cfg }),
  );
  for (const f of files) write(path.join(dir, f), "weights");
}
const signalListeners = () => ["SIGINT", "SIGTERM", "SIGHUP"].map((s) => process.listenerCount(s));

describe("checkOutputTarget: protected paths, refused even with --force", () => {
  it('"" and blanks (an unset variable)', () => {
    expect(errorOf(() => checkOutputTarget("")).name).toBe("OutputDirError");
    refused(() => checkOutputTarget(""), '-o "": empty output path (an unset variable?)');
    refused(
      () => checkOutputTarget("  ", { force: true }),
      '-o "  ": empty output path (an unset variable?)',
    );
  });

  it("the root directory", () => {
    refused(() => checkOutputTarget("/", { force: true }), "-o /: refusing to replace the root directory");
    refused(() => checkOutputTarget("/.."), "-o /..: refusing to replace the root directory");
  });

  // As root, `-o /dev/null --force` was accepted: the build then renamed /dev/null away and put its folder there.
  // Only checkOutputTarget is called here (it creates nothing), so this test is safe against the old code too.
  it("a device, FIFO or socket, and paths under /dev (but /dev/shm)", () => {
    refused(
      () => checkOutputTarget("/dev/null", { force: true }),
      "-o /dev/null: refusing to replace a device, FIFO or socket",
    );
    const fifo = path.join(box, "fifo");
    execFileSync("mkfifo", [fifo]);
    refused(
      () => checkOutputTarget(fifo, { force: true }),
      `-o ${fifo}: refusing to replace a device, FIFO or socket`,
    );
    for (const p of ["/dev/stdout", "/dev/tsllm-new-engine"])
      refused(
        () => checkOutputTarget(p, { force: true }),
        `-o ${p}: refusing to replace a system path under /dev`,
      );
    // Also through a link to /dev.
    const dev = path.join(box, "devlink");
    fs.symlinkSync("/dev", dev);
    refused(
      () => checkOutputTarget(path.join(dev, "tsllm-x"), { force: true }),
      `-o ${path.join(dev, "tsllm-x")}: refusing to replace a system path under /dev`,
    );
    if (fs.existsSync("/dev/shm"))
      expect(checkOutputTarget("/dev/shm/tsllm-no-such-engine")).toBe("/dev/shm/tsllm-no-such-engine");
    expect(fs.statSync("/dev/null").isCharacterDevice()).toBe(true);
  });

  it("the home folder, also through a link to it", () => {
    const h = path.join(box, "home");
    write(path.join(h, ".bashrc"));
    process.env.HOME = h;
    refused(() => checkOutputTarget(h, { force: true }), `-o ${h}: refusing to replace your home folder`);
    fs.symlinkSync(h, path.join(box, "h-link"));
    const link = path.join(box, "h-link");
    refused(
      () => checkOutputTarget(link, { force: true }),
      `-o ${link}: refusing to replace your home folder`,
    );
    // HOME as a link: the real folder is refused too.
    process.env.HOME = link;
    refused(() => checkOutputTarget(h, { force: true }), `-o ${h}: refusing to replace your home folder`);
  });

  it("works without HOME set", () => {
    delete process.env.HOME;
    const out = path.join(box, "eng");
    expect(checkOutputTarget(out)).toBe(out);
  });

  it("the current directory and its ancestors, also through a link", () => {
    const cwd = process.cwd();
    refused(() => checkOutputTarget(".", { force: true }), "-o .: refusing to replace the current directory");
    refused(
      () => checkOutputTarget(cwd, { force: true }),
      `-o ${cwd}: refusing to replace the current directory`,
    );
    const up = path.dirname(cwd);
    refused(
      () => checkOutputTarget("..", { force: true }),
      "-o ..: refusing to replace an ancestor of the current directory",
    );
    refused(
      () => checkOutputTarget(up, { force: true }),
      `-o ${up}: refusing to replace an ancestor of the current directory`,
    );
    const link = path.join(box, "up");
    fs.symlinkSync(up, link);
    refused(
      () => checkOutputTarget(link, { force: true }),
      `-o ${link}: refusing to replace an ancestor of the current directory`,
    );
    const here = path.join(box, "here");
    fs.symlinkSync(cwd, here);
    refused(
      () => checkOutputTarget(here, { force: true }),
      `-o ${here}: refusing to replace the current directory`,
    );
  });

  it("a folder holding an input of the build (or the input itself), also through a link", () => {
    const ck = path.join(box, "ck");
    write(path.join(ck, "model.safetensors"));
    const input = path.join(ck, "model.safetensors");
    const msg = (out: string, i: string) =>
      `-o ${out}: contains ${i}, an input of this build; choose another folder`;
    refused(() => checkOutputTarget(ck, { force: true, inputs: [input] }), msg(ck, input));
    refused(() => checkOutputTarget(ck, { force: true, inputs: [path.join(box, "other"), ck] }), msg(ck, ck));
    refused(() => checkOutputTarget(box, { force: true, inputs: [input] }), msg(box, input));
    const link = path.join(box, "ck-link");
    fs.symlinkSync(ck, link);
    refused(() => checkOutputTarget(link, { force: true, inputs: [input] }), msg(link, input));
    // A file whose name starts with ".." is inside too.
    write(path.join(ck, "..cfg"));
    refused(
      () => checkOutputTarget(ck, { force: true, inputs: [path.join(ck, "..cfg")] }),
      msg(ck, path.join(ck, "..cfg")),
    );
  });

  it("inputs beside or above the target are no reason to refuse", () => {
    const ck = path.join(box, "ck");
    write(path.join(ck, "model.safetensors"));
    const out = path.join(ck, "eng");
    expect(checkOutputTarget(out, { inputs: [ck, path.join(ck, "model.safetensors"), box] })).toBe(out);
    expect(checkOutputTarget(path.join(box, "ck2"), { inputs: [ck] })).toBe(path.join(box, "ck2"));
    expect(checkOutputTarget(path.join(box, "x", "eng"), { inputs: [path.join(box, "x", "eng2")] })).toBe(
      path.join(box, "x", "eng"),
    );
  });
});

describe("checkOutputTarget: what the target is taken for", () => {
  it("nothing there, an empty folder, a new nested path: allowed, returned resolved, nothing created", () => {
    const before = snapshot(box);
    expect(checkOutputTarget(path.join(box, "eng"))).toBe(path.join(box, "eng"));
    expect(checkOutputTarget(path.join(box, "a", "b", "eng"))).toBe(path.join(box, "a", "b", "eng"));
    fs.mkdirSync(path.join(box, "empty"));
    expect(checkOutputTarget(path.join(box, "empty"))).toBe(path.join(box, "empty"));
    const rel = path.relative(process.cwd(), path.join(box, "eng"));
    expect(checkOutputTarget(rel)).toBe(path.join(box, "eng"));
    expect(snapshot(box)).toEqual({ ...before, empty: "dir" });
  });

  it("a file, a link (even to an empty folder), a foreign folder: refused unless --force", () => {
    const f = path.join(box, "notes.txt");
    write(f);
    refused(() => checkOutputTarget(f), `-o ${f}: exists and is a file, not a tsllm engine; ${NOT_OURS}`);
    fs.mkdirSync(path.join(box, "empty"));
    const link = path.join(box, "link");
    fs.symlinkSync(path.join(box, "empty"), link);
    refused(() => checkOutputTarget(link), `-o ${link}: exists and is a symbolic link; ${NOT_OURS}`);
    const d = path.join(box, "data");
    write(path.join(d, "train.csv"));
    refused(
      () => checkOutputTarget(d),
      `-o ${d}: is a folder with files in it that is not a tsllm engine or ONNX export; ${NOT_OURS}`,
    );
    for (const p of [f, link, d]) expect(checkOutputTarget(p, { force: true })).toBe(p);
  });

  it("an earlier engine: config.json, its rank and tokenizer files, report.json and report.html", () => {
    const e = path.join(box, "eng");
    engineDir(e, { tokenizer: { files: ["tokenizer.json", "tokenizer_config.json"] } }, [
      "rank0.engine",
      "rank1.engine",
    ]);
    for (const n of ["tokenizer.json", "tokenizer_config.json", "report.json", "report.html"])
      write(path.join(e, n));
    expect(checkOutputTarget(e)).toBe(e);
    // Rank entries that are null or name no file are skipped; a config without a tokenizer is fine.
    const e2 = path.join(box, "eng2");
    engineDir(e2, { ranks: [null, {}, { file: "rank0.engine" }] });
    expect(checkOutputTarget(e2)).toBe(e2);
  });

  it("an ONNX export: onnx.json and its model and data files", () => {
    const o = path.join(box, "onnx");
    write(
      path.join(o, "onnx.json"),
      JSON.stringify({
        format: "tsllm-onnx",
        ranks: [{ file: "rank0.onnx", data: "rank0.onnx.data" }, null, { file: "rank1.onnx" }],
      }),
    );
    for (const n of ["rank0.onnx", "rank0.onnx.data", "rank1.onnx"]) write(path.join(o, n));
    expect(checkOutputTarget(o)).toBe(o);
    fs.writeFileSync(
      path.join(o, "onnx.json"),
      JSON.stringify({ format: "onnx", ranks: [{ file: "rank0.onnx" }] }),
    );
    expect(errorOf(() => checkOutputTarget(o)).message).toContain(
      "is a folder with files in it that is not a tsllm",
    );
    fs.writeFileSync(path.join(o, "onnx.json"), JSON.stringify({ format: "tsllm-onnx", ranks: {} }));
    expect(errorOf(() => checkOutputTarget(o)).message).toContain(
      "is a folder with files in it that is not a tsllm",
    );
  });

  it("a folder whose config.json is not an engine's is not ours", () => {
    const e = path.join(box, "eng");
    const notOurs = `-o ${e}: is a folder with files in it that is not a tsllm engine or ONNX export; ${NOT_OURS}`;
    for (const cfg of [
      { format_version: "1", build: {}, ranks: [] },
      { format_version: 1, build: "fp16", ranks: [] },
      { format_version: 1, ranks: [] },
      { format_version: 1, build: {}, ranks: {} },
      { build: {}, ranks: [] },
    ]) {
      fs.rmSync(e, { recursive: true, force: true });
      write(path.join(e, "config.json"), JSON.stringify(cfg));
      refused(() => checkOutputTarget(e), notOurs);
    }
    // Not JSON; a folder or a link named config.json.
    fs.rmSync(e, { recursive: true, force: true });
    write(path.join(e, "config.json"), "{");
    refused(() => checkOutputTarget(e), notOurs);
    fs.rmSync(e, { recursive: true, force: true });
    fs.mkdirSync(path.join(e, "config.json"), { recursive: true });
    refused(() => checkOutputTarget(e), notOurs);
    fs.rmSync(e, { recursive: true, force: true });
    engineDir(path.join(box, "real"), {}, []);
    fs.mkdirSync(e);
    fs.symlinkSync(path.join(box, "real", "config.json"), path.join(e, "config.json"));
    refused(() => checkOutputTarget(e), notOurs);
  });

  it("config.json is read up to 64 MiB", () => {
    const e = path.join(box, "eng");
    const json = JSON.stringify({ format_version: 1, build: {}, ranks: [] });
    fs.mkdirSync(e);
    fs.writeFileSync(path.join(e, "config.json"), json + " ".repeat((64 << 20) - json.length));
    expect(fs.statSync(path.join(e, "config.json")).size).toBe(64 << 20);
    expect(checkOutputTarget(e)).toBe(e);
    fs.appendFileSync(path.join(e, "config.json"), " ");
    expect(errorOf(() => checkOutputTarget(e)).message).toContain(
      "is a folder with files in it that is not a tsllm",
    );
  });

  it("an engine with other files is not replaced; the message counts them and names three", () => {
    const e = path.join(box, "eng");
    engineDir(e);
    write(path.join(e, "notes.txt"));
    refused(
      () => checkOutputTarget(e),
      `-o ${e}: is a tsllm output but also holds 1 other file(s) (notes.txt); ${NOT_OURS}`,
    );
    write(path.join(e, "b.txt"));
    write(path.join(e, "c.txt"));
    const three = errorOf(() => checkOutputTarget(e)).message;
    expect(three).toMatch(
      /^-o .*eng: is a tsllm output but also holds 3 other file\(s\) \([a-z.]+, [a-z.]+, [a-z.]+\); not/,
    );
    for (const n of ["notes.txt", "b.txt", "c.txt"]) expect(three).toContain(n);
    write(path.join(e, "d.txt"));
    const four = errorOf(() => checkOutputTarget(e)).message;
    expect(four).toMatch(/holds 4 other file\(s\) \([a-z.]+, [a-z.]+, [a-z.]+, …\); not replacing/);
    expect(["notes.txt", "b.txt", "c.txt", "d.txt"].filter((n) => four.includes(n))).toHaveLength(3);
    expect(checkOutputTarget(e, { force: true })).toBe(e);
  });

  it("a rank file that is a folder or a link, or named in a way config.json may not name, makes it not ours", () => {
    const e = path.join(box, "eng");
    engineDir(e, {}, []);
    fs.writeFileSync(
      path.join(e, "config.json"),
      JSON.stringify({
        format_version: 1,
        build: {},
        ranks: [{ file: "rank0.engine" }, { file: "rank 1.engine" }],
      }),
    );
    fs.mkdirSync(path.join(e, "rank0.engine"));
    write(path.join(e, "rank 1.engine"));
    const m = errorOf(() => checkOutputTarget(e)).message;
    expect(m).toMatch(/: is a tsllm output but also holds 2 other file\(s\) \(/);
    expect(m).toContain("rank0.engine");
    expect(m).toContain("rank 1.engine");
    fs.rmdirSync(path.join(e, "rank0.engine"));
    fs.symlinkSync(path.join(e, "rank 1.engine"), path.join(e, "rank0.engine"));
    expect(errorOf(() => checkOutputTarget(e)).message).toMatch(/holds 2 other file\(s\)/);
    // Tokenizer files that are not a list name nothing.
    const t = path.join(box, "tok");
    engineDir(t, { tokenizer: { files: "tokenizer.json" } });
    write(path.join(t, "tokenizer.json"));
    expect(errorOf(() => checkOutputTarget(t)).message).toMatch(
      /holds 1 other file\(s\) \(tokenizer\.json\)/,
    );
  });

  it("a path that cannot be created or looked up fails at once, naming the reason", () => {
    refused(
      () => checkOutputTarget("/proc/x"),
      "-o /proc/x: cannot create a folder in /proc: ENOENT (no such file or directory)",
    );
    const f = path.join(box, "afile");
    write(f);
    const under = path.join(f, "sub", "eng");
    refused(() => checkOutputTarget(under), `-o ${under}: ${f} is not a directory`);
    const long = path.join(box, "n".repeat(300));
    refused(() => checkOutputTarget(long), `-o ${long}: ENAMETOOLONG (name too long)`);
    const loop = path.join(box, "loop");
    fs.symlinkSync(loop, loop);
    const inLoop = path.join(loop, "eng");
    refused(() => checkOutputTarget(inLoop), `-o ${inLoop}: ELOOP (too many symbolic links encountered)`);
  });

  it("the probe folder goes inside the parent (whose name may be near the limit), and is removed", () => {
    const parent = path.join(box, "p".repeat(252));
    fs.mkdirSync(parent);
    const out = path.join(parent, "eng");
    const before = snapshot(box);
    expect(checkOutputTarget(out)).toBe(out);
    expect(snapshot(box)).toEqual(before);
  });
});

describe("OutputDir", () => {
  it("writes into a fresh sibling, commits into a new nested path, and leaves nothing else", () => {
    const out = path.join(box, "a", "b", "eng");
    const listeners = signalListeners();
    const d = new OutputDir(out);
    expect(d.target).toBe(out);
    expect(path.dirname(d.tmp)).toBe(path.join(box, "a", "b"));
    expect(path.basename(d.tmp).startsWith(`eng.tmp-${process.pid}-`)).toBe(true);
    expect(fs.readdirSync(d.tmp)).toEqual([]);
    expect(signalListeners()).toEqual(listeners.map((n) => n + 1));
    write(path.join(d.tmp, "config.json"), "new");
    d.commit();
    expect(signalListeners()).toEqual(listeners);
    expect(fs.readdirSync(path.join(box, "a", "b"))).toEqual(["eng"]);
    expect(fs.readFileSync(path.join(out, "config.json"), "utf8")).toBe("new");
    d.discard(); // as the writers' finally does: changes nothing now
    expect(fs.readdirSync(path.join(box, "a", "b"))).toEqual(["eng"]);
  });

  it("replaces an earlier engine whole, without leaving the old one", () => {
    const out = path.join(box, "eng");
    engineDir(out, {}, ["rank0.engine", "rank1.engine"]);
    const d = new OutputDir(out);
    engineDir(d.tmp);
    d.commit();
    expect(fs.readdirSync(out).sort()).toEqual(["config.json", "rank0.engine"]);
    expect(fs.readdirSync(box)).toEqual(["eng"]);
  });

  it("--force replaces a folder that is not ours; an empty folder is replaced without it", () => {
    const out = path.join(box, "data");
    write(path.join(out, "train.csv"));
    const d = new OutputDir(out, { force: true });
    write(path.join(d.tmp, "config.json"));
    d.commit();
    expect(fs.readdirSync(out)).toEqual(["config.json"]);
    const empty = path.join(box, "empty");
    fs.mkdirSync(empty);
    const e = new OutputDir(empty);
    write(path.join(e.tmp, "config.json"));
    e.commit();
    expect(fs.readdirSync(empty)).toEqual(["config.json"]);
    expect(fs.readdirSync(box).sort()).toEqual(["data", "empty"]);
  });

  it("a foreign file that appeared during the build is left as it is, and so is everything else", () => {
    const out = path.join(box, "x", "eng");
    const listeners = signalListeners();
    const d = new OutputDir(out);
    write(path.join(d.tmp, "config.json"));
    write(path.join(out, "mine.txt"), "mine");
    const before = snapshot(path.join(box, "x", "eng"));
    expect(errorOf(() => d.commit()).message).toBe(
      `-o ${out}: is a folder with files in it that is not a tsllm engine or ONNX export (appeared during the build); ${NOT_OURS}`,
    );
    expect(snapshot(out)).toEqual(before);
    expect(fs.readdirSync(path.join(box, "x"))).toEqual(["eng"]); // no temporary folder left
    expect(signalListeners()).toEqual(listeners);
  });

  it("a failed move puts the old engine back", () => {
    const out = path.join(box, "eng");
    engineDir(out);
    const before = snapshot(box);
    const d = new OutputDir(out);
    fs.rmSync(d.tmp, { recursive: true }); // the move of the build then fails
    expect(() => d.commit()).toThrow(/ENOENT/);
    expect(snapshot(box)).toEqual(before);
  });

  it("the old engine is moved aside under a fresh name: a user's files named like it are left alone", () => {
    const out = path.join(box, "eng");
    engineDir(out);
    write(`${out}.old-${process.pid}-0`, "mine");
    fs.symlinkSync(path.join(box, "nowhere"), `${out}.old-${process.pid}-1`); // a dangling link exists too
    const mine = snapshot(box);
    delete mine.eng;
    const d = new OutputDir(out);
    write(path.join(d.tmp, "config.json"), "new");
    d.commit();
    const after = snapshot(box);
    for (const [k, v] of Object.entries(mine))
      if (!k.startsWith("eng/") && k !== "eng") expect(after[k]).toBe(v);
    expect(fs.readdirSync(box).sort()).toEqual([
      "eng",
      `eng.old-${process.pid}-0`,
      `eng.old-${process.pid}-1`,
    ]);
    expect(fs.readFileSync(path.join(out, "config.json"), "utf8")).toBe("new");
  });

  it("the old engine is moved aside beside the target, under the first free name", async () => {
    const out = path.join(box, "eng");
    engineDir(out);
    write(`${out}.old-${process.pid}-0`, "mine");
    fs.symlinkSync(path.join(box, "nowhere"), `${out}.old-${process.pid}-1`);
    const d = new OutputDir(out);
    write(path.join(d.tmp, "config.json"), "new");
    const seen = new Set<string>();
    const w = fs.watch(box, (_, name) => {
      if (name) seen.add(String(name));
    });
    try {
      d.commit();
      const aside = `eng.old-${process.pid}-2`;
      for (let i = 0; i < 200 && !seen.has(aside); i++) await new Promise((r) => setTimeout(r, 10));
      expect(seen.has(aside)).toBe(true);
    } finally {
      w.close();
    }
    expect(fs.existsSync(`${out}.old-${process.pid}-2`)).toBe(false);
  });

  it("a parent that is a dangling link cannot be created: refused with the reason, nothing touched", () => {
    const link = path.join(box, "link");
    fs.symlinkSync(path.join(box, "gone", "x"), link);
    const out = path.join(link, "sub", "eng");
    refused(() => new OutputDir(out), `-o ${out}: cannot create ${link}: EEXIST (file already exists)`);
  });

  it("yieldToSignals lets callbacks already queued (a signal's handler) run first", async () => {
    let ran = false;
    setImmediate(() => {
      ran = true;
    });
    await yieldToSignals();
    expect(ran).toBe(true);
  });

  it("discard removes the temporary folder and the parents it created, innermost first, not one in use", () => {
    const out = path.join(box, "a", "b", "c", "eng");
    const d = new OutputDir(out);
    write(path.join(d.tmp, "rank0.engine"));
    d.discard();
    expect(fs.readdirSync(box)).toEqual([]);
    const d2 = new OutputDir(out);
    write(path.join(box, "a", "mine.txt")); // someone else's file, in a folder this build created
    d2.discard();
    expect(fs.readdirSync(box)).toEqual(["a"]);
    expect(fs.readdirSync(path.join(box, "a"))).toEqual(["mine.txt"]);
    // A second discard does not remove a folder made again since.
    fs.mkdirSync(path.join(box, "a", "b"));
    d2.discard();
    expect(fs.existsSync(path.join(box, "a", "b"))).toBe(true);
  });

  it("a failed commit removes the parents it created", () => {
    const out = path.join(box, "a", "eng");
    const d = new OutputDir(out);
    fs.rmSync(d.tmp, { recursive: true });
    expect(() => d.commit()).toThrow(/ENOENT/);
    expect(fs.readdirSync(box)).toEqual([]);
  });

  it("a folder beside the target that cannot be created: refused, the parents it made removed", () => {
    const out = path.join(box, "a", "b", "e".repeat(245));
    const e = errorOf(() => new OutputDir(out));
    expect(e.message).toBe(`-o ${out}: cannot create a folder beside it: ENAMETOOLONG (name too long)`);
    expect(fs.readdirSync(box)).toEqual([]);
  });

  it("refuses what checkOutputTarget refuses, creating nothing", () => {
    const f = path.join(box, "notes.txt");
    write(f);
    refused(() => new OutputDir(f), `-o ${f}: exists and is a file, not a tsllm engine; ${NOT_OURS}`);
    const listeners = signalListeners();
    refused(
      () => new OutputDir(path.join(f, "a", "eng")),
      `-o ${path.join(f, "a", "eng")}: ${f} is not a directory`,
    );
    expect(signalListeners()).toEqual(listeners);
  });

  it("an exit before commit (process.exit, an uncaught exception) removes the temporary folder and its parents", () => {
    const others = process.listeners("exit");
    const d = new OutputDir(path.join(box, "a", "eng"));
    write(path.join(d.tmp, "rank0.engine"));
    const ours = process.listeners("exit").filter((l) => !others.includes(l));
    expect(ours).toHaveLength(1);
    (ours[0] as () => void)();
    expect(fs.readdirSync(box)).toEqual([]);
    expect(process.listeners("exit")).toEqual(others);
    // After a commit nothing is left listening, and the engine stays.
    const c = new OutputDir(path.join(box, "b"));
    write(path.join(c.tmp, "config.json"), "{}");
    c.commit();
    expect(process.listeners("exit")).toEqual(others);
    expect(fs.readdirSync(box)).toEqual(["b"]);
  });

  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const)
    it(`${sig} during the build removes the temporary folder and its parents, then re-raises`, () => {
      const kill = vi.spyOn(process, "kill").mockImplementation(() => true);
      const others = process.listeners(sig);
      const listeners = signalListeners();
      const d = new OutputDir(path.join(box, "a", "eng"));
      write(path.join(d.tmp, "rank0.engine"));
      const ours = process.listeners(sig).filter((l) => !others.includes(l));
      expect(ours).toHaveLength(1);
      (ours[0] as (s: NodeJS.Signals) => void)(sig);
      expect(fs.readdirSync(box)).toEqual([]);
      expect(signalListeners()).toEqual(listeners);
      expect(kill.mock.calls).toEqual([[process.pid, sig]]);
    });
});
