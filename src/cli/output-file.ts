// Single files the CLIs write on request: `--json` reports and `prepare-dataset --output`. The bar for them is the
// build directory's (engine/output-dir.ts): never a file the user did not ask us to replace, never a half-written one.
//   - The text is written whole or not at all (fs-atomic.ts: a fresh sibling renamed into place).
//   - An existing target is replaced only when it is an earlier output of the same kind (`isOurs` reads it), or
//     with --force. A directory never. A stream (a pipe, /dev/stdout, /dev/null) is appended to in place: it
//     stores nothing that could be lost.
//   - Never, even with --force, a file the command reads (the engine's config.json or report.json, the dataset):
//     `--json ENGINE/report.json --force` replaced the engine's fusion report, `--output ENGINE/config.json --force`
//     the engine itself.
//   - checkOutputFile runs before the work (a benchmark of minutes), so a refusal comes at once; writeOutputFile
//     checks again at the end.
import * as fs from "node:fs";
import * as path from "node:path";
import { cannotCreateIn, inputWithin, isLink } from "../engine/output-dir.ts";
import { writeWhole } from "../fs-atomic.ts";

export class OutputFileError extends Error {
  override name = "OutputFileError";
}

export interface OutputFileOptions {
  /** The flag that named the file, for messages (`--json`). */
  flag: string;
  /** What we write, for messages ("a tsllm-bench latency report"). */
  what: string;
  /**
   * Whether an existing file's text is an earlier output of ours of the same kind, which may be replaced. It sees
   * the first MAX_SNIFF_BYTES of a larger file (a dataset is known by its first line; a report that large is not one).
   */
  isOurs: (text: string) => boolean;
  /** Replace an existing file that is not ours (--force). */
  force?: boolean;
  /** The files the command reads (filesIn of a folder it reads), never replaced, even with force. */
  inputs?: readonly string[];
}

type Target = { kind: "new" } | { kind: "stream" } | { kind: "file"; real: string };

/**
 * Most bytes read to decide whether a file is ours. Only the start of a larger file is read: a dataset of 300,000
 * requests (160 MB) is known by its first line, and prepare-dataset must be able to replace its own earlier output.
 */
const MAX_SNIFF_BYTES = 64 << 20;

function readStart(file: string, max: number): string {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(Math.min(max, fs.fstatSync(fd).size));
    let got = 0;
    while (got < buf.length) {
      const n = fs.readSync(fd, buf, got, buf.length - got, got);
      if (n === 0) break;
      got += n;
    }
    return buf.subarray(0, got).toString("utf8");
  } finally {
    fs.closeSync(fd);
  }
}

function classify(file: string, o: OutputFileOptions): Target {
  const t = targetOf(file, o);
  if (t.kind === "stream") return t;
  // A folder that cannot hold the file writeWhole creates beside the target (read-only, under /proc) was found only
  // by the write at the end: after the benchmark's minutes, its report lost.
  const dir = path.dirname(t.kind === "file" ? t.real : path.resolve(file));
  const why = cannotCreateIn(dir);
  if (why) throw new OutputFileError(`${o.flag} ${file}: cannot create a file in ${dir}: ${why}`);
  return t;
}

/** What `file` is as an output target, refused where it must not be written (see the top of this file). */
function targetOf(file: string, o: OutputFileOptions): Target {
  const q = `${o.flag} ${file}`;
  if (file.trim() === "") throw new OutputFileError(`${o.flag}: empty path`);
  const dir = path.dirname(path.resolve(file));
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT") throw new OutputFileError(`${q}: cannot be read (${code})`);
    // Missing: a dangling link is still a file of the user's (the link).
    if (isLink(file)) throw new OutputFileError(`${q}: is a link to a missing file; name another path`);
    if (!isDir(dir)) throw new OutputFileError(`${q}: folder ${dir} does not exist`);
    return { kind: "new" };
  }
  if (st.isDirectory()) throw new OutputFileError(`${q}: is a directory; name a file`);
  if (st.isFIFO() || st.isCharacterDevice() || st.isSocket()) return { kind: "stream" };
  // /dev/stdout, /dev/fd/N, /proc/self/fd/N: the process's own descriptors, even when they lead to a regular file
  // (`--json /dev/stdout > log`), are streams: appended to, never replaced.
  if (st.isFile() && /^\/(dev|proc)\//.test(path.resolve(file))) return { kind: "stream" };
  if (!st.isFile()) throw new OutputFileError(`${q}: is not a regular file`);
  const input = inputWithin(file, o.inputs ?? []);
  if (input !== undefined)
    throw new OutputFileError(`${q}: is ${input}, an input of this command; name another file`);
  // Through a link the file it points to is replaced (the link stays), and only what that file holds decides.
  const real = fs.realpathSync(file);
  if (o.force) return { kind: "file", real };
  let ours = false;
  try {
    ours = o.isOurs(readStart(real, MAX_SNIFF_BYTES));
  } catch {
    // a text isOurs cannot read is not ours
  }
  if (!ours)
    throw new OutputFileError(
      `${q}: exists and is not ${o.what} written earlier; pass --force to replace it, or name another file`,
    );
  return { kind: "file", real };
}

const isDir = (p: string) => {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
};

/** Refuses now what writeOutputFile would refuse later (nothing is created). */
export function checkOutputFile(file: string, o: OutputFileOptions): void {
  classify(file, o);
}

/** Writes `text` (or its parts one after the other, drawn as written: a text past V8's longest string, or one too
 *  large to hold) to `file` whole or not at all (see the top of this file). */
export function writeOutputFile(file: string, text: string | Iterable<string>, o: OutputFileOptions): void {
  const t = classify(file, o);
  const parts = typeof text === "string" ? [text] : text;
  const writeAll = (fd: number) => {
    for (const p of parts) fs.writeFileSync(fd, p);
  };
  try {
    if (t.kind === "stream") appendTo(file, writeAll);
    else writeWhole(t.kind === "file" ? t.real : path.resolve(file), writeAll);
  } catch (e) {
    // A stream's failure names the file too: "--output /dev/full" said only "ENOSPC: no space left on device,
    // write". (What a stream took before it failed, it keeps.)
    const what = t.kind === "stream" ? "not written whole" : "not written";
    throw new OutputFileError(`${o.flag} ${file}: ${what} (${(e as Error).message})`);
  }
}

function appendTo(file: string, write: (fd: number) => void): void {
  const fd = fs.openSync(file, "a");
  try {
    write(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The `--json FILE` report of a tsllm-bench command, marked with the command that wrote it (`tsllm_bench`): an
 *  earlier report of the same command may be replaced, anything else only with --force. */
export class JsonReport {
  private readonly opts: OutputFileOptions;
  /** Checks the target at once, before the command's work. */
  constructor(
    readonly file: string,
    readonly command: string,
    force?: boolean,
    inputs?: readonly string[],
  ) {
    this.opts = {
      flag: "--json",
      what: `a tsllm-bench ${command} report`,
      isOurs: (text) => (JSON.parse(text) as { tsllm_bench?: unknown } | null)?.tsllm_bench === command,
      force,
      inputs,
    };
    checkOutputFile(file, this.opts);
  }

  write(report: object): void {
    writeOutputFile(
      this.file,
      `${JSON.stringify({ tsllm_bench: this.command, ...report }, null, 2)}\n`,
      this.opts,
    );
  }
}

/** A command's JsonReport when --json was given; `inputs` as OutputFileOptions'. */
export const jsonReport = (
  o: { json?: string; force?: boolean },
  command: string,
  inputs?: readonly string[],
): JsonReport | undefined =>
  o.json === undefined ? undefined : new JsonReport(o.json, command, o.force, inputs);

/** --force of the commands that write --json / --output files. */
export const FORCE_HELP =
  "replace an existing --json / --output file that is not an earlier one of the same kind";
