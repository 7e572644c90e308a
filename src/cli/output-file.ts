// Single files the CLIs write on request: `--json` reports and `prepare-dataset --output`. The bar for them is the
// build directory's (engine/output-dir.ts): never a file the user did not ask us to replace, never a half-written one.
//   - The text is written whole or not at all (fs-atomic.ts: a fresh sibling renamed into place).
//   - An existing target is replaced only when it is an earlier output of the same kind (`isOurs` reads it), or
//     with --force. A directory never. A stream (a pipe, /dev/stdout, /dev/null) is appended to in place: it
//     stores nothing that could be lost.
//   - checkOutputFile runs before the work (a benchmark of minutes), so a refusal comes at once; writeOutputFile
//     checks again at the end.
import * as fs from "node:fs";
import * as path from "node:path";
import { isLink } from "../engine/output-dir.ts";
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

/** Writes `text` (or its parts one after the other: a text past V8's longest string) to `file` whole or not at all
 *  (see the top of this file). */
export function writeOutputFile(file: string, text: string | readonly string[], o: OutputFileOptions): void {
  const t = classify(file, o);
  const parts = typeof text === "string" ? [text] : text;
  const writeAll = (fd: number) => {
    for (const p of parts) fs.writeFileSync(fd, p);
  };
  if (t.kind === "stream") {
    const fd = fs.openSync(file, "a");
    try {
      writeAll(fd);
    } finally {
      fs.closeSync(fd);
    }
    return;
  }
  const target = t.kind === "file" ? t.real : path.resolve(file);
  try {
    writeWhole(target, writeAll);
  } catch (e) {
    throw new OutputFileError(`${o.flag} ${file}: not written (${(e as Error).message})`);
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
  ) {
    this.opts = {
      flag: "--json",
      what: `a tsllm-bench ${command} report`,
      isOurs: (text) => (JSON.parse(text) as { tsllm_bench?: unknown } | null)?.tsllm_bench === command,
      force,
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

/** A command's JsonReport when --json was given. */
export const jsonReport = (o: { json?: string; force?: boolean }, command: string): JsonReport | undefined =>
  o.json === undefined ? undefined : new JsonReport(o.json, command, o.force);

/** --force of the commands that write --json / --output files. */
export const FORCE_HELP =
  "replace an existing --json / --output file that is not an earlier one of the same kind";
