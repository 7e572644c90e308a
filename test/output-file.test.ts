// src/cli/output-file.ts: the --json / --output files of the CLIs are never written over a file of the user's
// that is not an earlier output of the same kind, and are never left half-written.
import { execFileSync, spawnSync } from "node:child_process";
import fsDefault, * as fs from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import * as path from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  checkOutputFile,
  JsonReport,
  jsonReport,
  OutputFileError,
  type OutputFileOptions,
  writeOutputFile,
} from "../src/cli/output-file.ts";
import { isDatasetText } from "../src/serving/dataset.ts";
import { tmpDir } from "./fixtures.ts";

let dir: string;
beforeEach(() => {
  dir = tmpDir();
});
afterEach(() => {
  vi.restoreAllMocks();
  syncBuiltinESMExports();
});
// The module under test imports node:fs as a namespace, whose bindings follow the built-in's default export
// once synced: how a failure is put in the middle of a write.
function spyFs<K extends "renameSync" | "openSync" | "readSync">(name: K) {
  const spy = vi.spyOn(fsDefault, name);
  syncBuiltinESMExports();
  return spy;
}

const OPTS: OutputFileOptions = { flag: "--out", what: "a thing", isOurs: (t) => t.startsWith("OURS") };
const files = () => fs.readdirSync(dir).sort();

describe("writeOutputFile", () => {
  it("creates a new file whole, leaving no temporary sibling", () => {
    const f = path.join(dir, "a.txt");
    writeOutputFile(f, "OURS 1\n", OPTS);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS 1\n");
    expect(files()).toEqual(["a.txt"]);
  });

  // prepare-dataset's text in parts: one string of it failed past V8's longest string ("Invalid string length").
  it("writes a text given in parts as their concatenation, to a file and to a stream", () => {
    const f = path.join(dir, "parts.txt");
    writeOutputFile(f, ["OURS 1\n", "two\n", "", "three"], OPTS);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS 1\ntwo\nthree");
    writeOutputFile(f, ["OURS 2\n"], OPTS);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS 2\n");
    expect(files()).toEqual(["parts.txt"]);
    const fifo = path.join(dir, "pipe");
    execFileSync("mkfifo", [fifo]);
    const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      writeOutputFile(fifo, ["through ", "the pipe"], OPTS);
      const buf = Buffer.alloc(64);
      expect(buf.subarray(0, fs.readSync(reader, buf)).toString()).toBe("through the pipe");
    } finally {
      fs.closeSync(reader);
    }
  });

  it("replaces an earlier output of ours, refuses any other file with one line and leaves it as it was", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS old");
    writeOutputFile(f, "OURS new", OPTS);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS new");
    fs.writeFileSync(f, "the user's notes");
    expect(() => writeOutputFile(f, "OURS", OPTS)).toThrow(
      new OutputFileError(
        `--out ${f}: exists and is not a thing written earlier; pass --force to replace it, or name another file`,
      ),
    );
    expect(() => checkOutputFile(f, OPTS)).toThrow(OutputFileError);
    expect(fs.readFileSync(f, "utf8")).toBe("the user's notes");
    expect(files()).toEqual(["a.txt"]);
  });

  it("replaces any file with force", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "the user's notes");
    writeOutputFile(f, "OURS", { ...OPTS, force: true });
    expect(fs.readFileSync(f, "utf8")).toBe("OURS");
  });

  it("counts a file that isOurs cannot read (it throws) as not ours", () => {
    const f = path.join(dir, "a.json");
    fs.writeFileSync(f, "{ not json");
    const json: OutputFileOptions = { ...OPTS, isOurs: (t) => JSON.parse(t).ok === true };
    expect(() => writeOutputFile(f, "{}", json)).toThrow(/exists and is not a thing written earlier/);
    fs.writeFileSync(f, '{"ok": true}');
    writeOutputFile(f, '{"ok": true, "n": 2}', json);
    expect(fs.readFileSync(f, "utf8")).toBe('{"ok": true, "n": 2}');
  });

  it("never writes into a directory, a missing folder, or over a dangling link", () => {
    expect(() => writeOutputFile(dir, "OURS", { ...OPTS, force: true })).toThrow(
      `--out ${dir}: is a directory; name a file`,
    );
    const missing = path.join(dir, "no", "a.txt");
    expect(() => checkOutputFile(missing, OPTS)).toThrow(
      `--out ${missing}: folder ${path.join(dir, "no")} does not exist`,
    );
    const link = path.join(dir, "link");
    fs.symlinkSync(path.join(dir, "gone"), link);
    expect(() => writeOutputFile(link, "OURS", { ...OPTS, force: true })).toThrow(
      /is a link to a missing file/,
    );
    expect(fs.readlinkSync(link)).toBe(path.join(dir, "gone"));
    expect(() => checkOutputFile("  ", OPTS)).toThrow("--out: empty path");
  });

  it("says why a path cannot be looked at, in one line of the error's own kind", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS");
    const under = path.join(f, "b.txt");
    let err: unknown;
    try {
      checkOutputFile(under, OPTS);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(OutputFileError);
    expect((err as Error).name).toBe("OutputFileError");
    expect((err as Error).message).toBe(`--out ${under}: cannot be read (ENOTDIR)`);
  });

  it("refuses at once a folder no file can be created in, leaving nothing there", () => {
    // It was found by the write at the end: tsllm-bench throughput ran its whole benchmark, then lost the report.
    expect(() => checkOutputFile("/proc/r.json", OPTS)).toThrow(
      new OutputFileError(
        "--out /proc/r.json: cannot create a file in /proc: ENOENT (no such file or directory)",
      ),
    );
    expect(() => writeOutputFile("/proc/r.json", "OURS", OPTS)).toThrow(
      /cannot create a file in \/proc: ENOENT/,
    );
    expect(files()).toEqual([]);
    const f = path.join(dir, "a.txt");
    checkOutputFile(f, OPTS);
    expect(files()).toEqual([]);
  });

  it("reads the first 64 MiB of a larger file to decide whether it is ours (a large dataset is replaced)", () => {
    // A 160 MB earlier prepare-dataset output was refused without --force (larger files were never read).
    const f = path.join(dir, "big.txt");
    const seen: number[] = [];
    const start = "OURS\n";
    const byStart: OutputFileOptions = {
      ...OPTS,
      isOurs: (t) => {
        seen.push(t.length);
        return t.startsWith(start);
      },
    };
    fs.writeFileSync(f, start);
    fs.truncateSync(f, (64 << 20) + 1); // sparse: nothing more written
    expect(() => checkOutputFile(f, byStart)).not.toThrow();
    expect(seen).toEqual([64 << 20]);
    fs.writeFileSync(f, "theirs\n");
    fs.truncateSync(f, (64 << 20) + 1);
    expect(() => checkOutputFile(f, byStart)).toThrow(/exists and is not a thing written earlier/);
    expect(() => checkOutputFile(f, { ...byStart, force: true })).not.toThrow();
  });

  it("through a link replaces the file it points to and keeps the link", () => {
    const real = path.join(dir, "real.txt");
    fs.writeFileSync(real, "OURS old");
    const link = path.join(dir, "link.txt");
    fs.symlinkSync(real, link);
    writeOutputFile(link, "OURS new", OPTS);
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(real, "utf8")).toBe("OURS new");
    fs.writeFileSync(real, "the user's");
    expect(() => writeOutputFile(link, "OURS", OPTS)).toThrow(/exists and is not/);
    expect(fs.readFileSync(real, "utf8")).toBe("the user's");
    // with --force too: the file behind the link is replaced, the link stays
    writeOutputFile(link, "OURS forced", { ...OPTS, force: true });
    expect(fs.lstatSync(link).isSymbolicLink()).toBe(true);
    expect(fs.readFileSync(real, "utf8")).toBe("OURS forced");
  });

  it("writes a stream (a named pipe) in place", () => {
    // A pipe in the test's own folder, never a device: a mutant that renamed over the target would replace it
    // (as root it once replaced /dev/null with a file). Its reader is opened first, so the write does not block.
    const fifo = path.join(dir, "pipe");
    execFileSync("mkfifo", [fifo]);
    const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      expect(() => checkOutputFile(fifo, OPTS)).not.toThrow();
      writeOutputFile(fifo, "through the pipe", OPTS);
      const buf = Buffer.alloc(64);
      expect(buf.subarray(0, fs.readSync(reader, buf)).toString()).toBe("through the pipe");
      expect(fs.statSync(fifo).isFIFO()).toBe(true);
      expect(files()).toEqual(["pipe"]);
    } finally {
      fs.closeSync(reader);
    }
  });

  it("appends to /dev/stdout led to a file (`--json /dev/stdout > log`), keeping what the log held", () => {
    const log = path.join(dir, "log.txt");
    fs.writeFileSync(log, "before\n");
    const fd = fs.openSync(log, "a");
    const code = `import { writeOutputFile } from ${JSON.stringify(path.resolve("src/cli/output-file.ts"))};
      writeOutputFile("/dev/stdout", "report\\n", { flag: "--json", what: "x", isOurs: () => false });`;
    const r = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", code], {
      stdio: ["ignore", fd, "pipe"],
      encoding: "utf8",
    });
    fs.closeSync(fd);
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(fs.readFileSync(log, "utf8")).toBe("before\nreport\n");
    expect(files()).toEqual(["log.txt"]);
  });

  it("the process's own descriptor of a regular file (/dev/fd/N, /proc/self/fd/N) is appended to, in this process too", () => {
    // The child-process test above shows it for /dev/stdout; here the same rule where the test runner sees it.
    const log = path.join(dir, "log.txt");
    fs.writeFileSync(log, "before\n");
    const { ino } = fs.statSync(log);
    const fd = fs.openSync(log, "a");
    try {
      expect(() => checkOutputFile(`/dev/fd/${fd}`, OPTS)).not.toThrow();
      writeOutputFile(`/dev/fd/${fd}`, "report\n", OPTS);
      writeOutputFile(`/proc/self/fd/${fd}`, ["more\n"], OPTS);
    } finally {
      fs.closeSync(fd);
    }
    expect(fs.readFileSync(log, "utf8")).toBe("before\nreport\nmore\n");
    expect(fs.statSync(log).ino).toBe(ino);
    expect(files()).toEqual(["log.txt"]);
  });

  it("a folder named dev or proc elsewhere is an ordinary folder: its files are refused or replaced, never appended to", () => {
    for (const name of ["dev", "proc"]) {
      const f = path.join(dir, name, "r.json");
      fs.mkdirSync(path.dirname(f));
      fs.writeFileSync(f, "the user's");
      expect(() => writeOutputFile(f, "OURS", OPTS)).toThrow(
        new OutputFileError(
          `--out ${f}: exists and is not a thing written earlier; pass --force to replace it, or name another file`,
        ),
      );
      expect(fs.readFileSync(f, "utf8")).toBe("the user's");
      writeOutputFile(f, "OURS", { ...OPTS, force: true });
      expect(fs.readFileSync(f, "utf8")).toBe("OURS");
    }
  });

  // A block device (a disk) is neither a file nor a stream: refused, never read as a report nor written.
  // (Only checkOutputFile, which writes nothing, is called on it.)
  const blockDevice = fs
    .readdirSync("/dev")
    .map((n) => `/dev/${n}`)
    .find((p) => {
      try {
        return fs.statSync(p).isBlockDevice();
      } catch {
        return false;
      }
    });
  it.runIf(blockDevice !== undefined)("refuses a block device as not a regular file", () => {
    expect(() => checkOutputFile(blockDevice!, OPTS)).toThrow(
      new OutputFileError(`--out ${blockDevice}: is not a regular file`),
    );
  });

  it("leaves no descriptor open: after deciding a file is ours, writing a stream, a stream's failure", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS old");
    const fifo = path.join(dir, "pipe");
    execFileSync("mkfifo", [fifo]);
    const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
    try {
      const open = () => fs.readdirSync("/proc/self/fd").length;
      const before = open();
      for (let i = 0; i < 4; i++) {
        checkOutputFile(f, OPTS);
        writeOutputFile(fifo, "x", OPTS);
        expect(() => writeOutputFile("/dev/full", "x", OPTS)).toThrow(/not written whole/);
      }
      expect(open()).toBe(before);
    } finally {
      fs.closeSync(reader);
    }
  });

  it("reads a file that comes in short reads (a network or FUSE file system) whole before deciding", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS, and the rest of it");
    const readSync = fs.readSync;
    let calls = 0;
    // The first read returns 3 bytes, as read(2) may; the others as asked.
    spyFs("readSync").mockImplementation(((fd: number, buf: Buffer, off: number, len: number, pos: number) =>
      readSync(fd, buf, off, calls++ === 0 ? Math.min(len, 3) : len, pos)) as typeof fs.readSync);
    const seen: string[] = [];
    const o = {
      ...OPTS,
      isOurs: (t: string) => {
        seen.push(t);
        return t.startsWith("OURS");
      },
    };
    writeOutputFile(f, "OURS new", o);
    expect(seen).toEqual(["OURS, and the rest of it"]);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS new");
  });

  it("a file cut short while it is read (another process truncates it): what was read decides, nothing past it", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS, and the rest of it");
    const readSync = fs.readSync;
    let cut = false;
    // Truncated to 4 bytes after its size was taken: the reads then end there (a read of 0 bytes).
    spyFs("readSync").mockImplementation(((
      fd: number,
      buf: Buffer,
      off: number,
      len: number,
      pos: number,
    ) => {
      if (!cut) {
        cut = true;
        fs.truncateSync(f, 4);
      }
      return readSync(fd, buf, off, len, pos);
    }) as typeof fs.readSync);
    const seen: string[] = [];
    const o = {
      ...OPTS,
      isOurs: (t: string) => {
        seen.push(t);
        return t.startsWith("OURS");
      },
    };
    checkOutputFile(f, o);
    expect(seen).toEqual(["OURS"]);
  });

  it("a stream that fails names the file, in one line of the error's own kind", () => {
    // It was Node's bare "ENOSPC: no space left on device, write" (prepare-dataset --output /dev/full).
    expect(() => writeOutputFile("/dev/full", ["OURS", " more"], OPTS)).toThrow(
      new OutputFileError("--out /dev/full: not written whole (ENOSPC: no space left on device, write)"),
    );
  });

  it("removes its temporary sibling and keeps the old file when the rename fails", () => {
    const f = path.join(dir, "a.txt");
    fs.writeFileSync(f, "OURS old");
    spyFs("renameSync").mockImplementation(() => {
      throw new Error("EXDEV: simulated");
    });
    syncBuiltinESMExports();
    expect(() => writeOutputFile(f, "OURS new", OPTS)).toThrow(`--out ${f}: not written (EXDEV: simulated)`);
    expect(fs.readFileSync(f, "utf8")).toBe("OURS old");
    expect(files()).toEqual(["a.txt"]);
  });

  it("never reuses an existing file as its temporary (created exclusively, with a random name)", () => {
    const f = path.join(dir, "a.txt");
    const open = spyFs("openSync");
    writeOutputFile(f, "OURS", OPTS);
    const [tmp, flags] = open.mock.calls[0]!;
    expect(flags).toBe("wx");
    expect(path.dirname(String(tmp))).toBe(dir);
    expect(path.basename(String(tmp))).toMatch(new RegExp(`^\\.a\\.txt\\.tmp-${process.pid}-[0-9a-f]{8}$`));
  });
});

describe("JsonReport", () => {
  it("stamps the report with its command and replaces only a report of the same command", () => {
    const f = path.join(dir, "r.json");
    new JsonReport(f, "latency").write({ a: 1 });
    expect(JSON.parse(fs.readFileSync(f, "utf8"))).toEqual({ tsllm_bench: "latency", a: 1 });
    expect(Object.keys(JSON.parse(fs.readFileSync(f, "utf8")))[0]).toBe("tsllm_bench");
    new JsonReport(f, "latency").write({ a: 2 });
    expect(JSON.parse(fs.readFileSync(f, "utf8")).a).toBe(2);
    // another command's report, and a JSON file that is not a report: refused when constructed (before any work)
    expect(() => new JsonReport(f, "throughput")).toThrow(
      `--json ${f}: exists and is not a tsllm-bench throughput report written earlier; pass --force to replace it, or name another file`,
    );
    fs.writeFileSync(f, "null");
    expect(() => new JsonReport(f, "latency")).toThrow(/not a tsllm-bench latency report/);
    new JsonReport(f, "throughput", true).write({ b: 1 });
    expect(JSON.parse(fs.readFileSync(f, "utf8"))).toEqual({ tsllm_bench: "throughput", b: 1 });
  });

  it("never replaces a file the command reads, even with --force, named as given or through a link", () => {
    // `--json ENGINE/report.json --force` replaced the engine's fusion report, `--json DATASET --force` the dataset.
    const engine = path.join(dir, "engine");
    fs.mkdirSync(engine);
    fs.writeFileSync(path.join(engine, "report.json"), '{"passes": []}\n');
    const ds = path.join(dir, "ds.jsonl");
    fs.writeFileSync(ds, '{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    const link = path.join(dir, "link.json");
    fs.symlinkSync(path.join(engine, "report.json"), link);
    const inputs = [path.join(engine, "report.json"), ds];
    for (const [f, input] of [
      [path.join(engine, "report.json"), inputs[0]],
      [ds, ds],
      [path.relative(process.cwd(), ds), ds],
      [link, inputs[0]],
    ])
      expect(() => new JsonReport(f!, "throughput", true, inputs)).toThrow(
        `--json ${f}: is ${input}, an input of this command; name another file`,
      );
    expect(fs.readFileSync(path.join(engine, "report.json"), "utf8")).toBe('{"passes": []}\n');
    expect(fs.readFileSync(ds, "utf8")).toBe('{"task_id":0,"input_ids":[1],"output_tokens":1}\n');
    // A new file beside them is written.
    new JsonReport(path.join(engine, "bench.json"), "throughput", false, inputs).write({ a: 1 });
    expect(JSON.parse(fs.readFileSync(path.join(engine, "bench.json"), "utf8")).a).toBe(1);
  });

  it("is absent without --json", () => {
    expect(jsonReport({}, "latency")).toBeUndefined();
    expect(jsonReport({ json: path.join(dir, "x.json") }, "latency")).toBeInstanceOf(JsonReport);
  });
});

describe("isDatasetText", () => {
  it("knows a dataset as prepare-dataset writes it by its first line's keys, in order", () => {
    expect(isDatasetText('{"task_id":0,"input_ids":[1,2],"output_tokens":3}\n{"task_id":1}')).toBe(true);
    expect(isDatasetText('{"input_ids":[1,2],"task_id":0,"output_tokens":3}')).toBe(false);
    expect(isDatasetText('{"task_id":0,"input_ids":[1],"output_tokens":3,"x":1}')).toBe(false);
    expect(isDatasetText("task_id,input_ids\n")).toBe(false);
    expect(isDatasetText("null")).toBe(false);
    expect(isDatasetText("")).toBe(false);
  });
});
