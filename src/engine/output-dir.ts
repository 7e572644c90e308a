// Where a build writes: the output directory of tsllm-compile (engine or --emit onnx).
//
// A build tool must never lose a user's data. So the target is classified before any work
// (checkOutputTarget), the build writes into a new temporary sibling `<out>.tmp-<pid>-<random>`, and only a complete
// build is moved into place (OutputDir.commit). What may be replaced:
//   - nothing there, or an empty directory;
//   - an earlier tsllm engine or ONNX directory: its config names it ours and nothing else is inside;
//   - anything else (a folder that is not ours, a file, a link) only with --force;
//   - never, even with --force: "" (an unset variable), `/`, the home folder, the current directory or
//     one of its ancestors, one of the build's own inputs (a file of the checkpoint or tokenizer folder too) or a
//     folder holding one, a device, FIFO or socket, or a path under /dev (but /dev/shm).
// SIGINT/SIGTERM/SIGHUP during the write remove the temporary folder and leave the old target untouched, and so does
// any other exit before commit (process.exit anywhere, an uncaught exception).
// The temporary names are created fresh (never an existing path), so no file of the user's is reused.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { cleanUpOnSignal } from "../fs-atomic.ts";
import { isPlainFileName } from "./format.ts";

export class OutputDirError extends Error {
  override name = "OutputDirError";
}

/** Files an engine directory may hold besides config.json and the rank and tokenizer files it names. */
export const ENGINE_EXTRA_FILES = ["report.json", "report.html"];

export interface OutputOptions {
  /** Replace a target that is not ours (a file, a foreign folder); still never the protected ones. */
  force?: boolean;
  /** Paths the build reads (checkpoint, config, model file): the target may not contain them. */
  inputs?: string[];
}

type Kind = "missing" | "empty" | "ours" | "foreign";

const q = (p: string) => JSON.stringify(p);

/** Checks that `out` may be written and that it can be created; returns it resolved. Creates nothing. */
export function checkOutputTarget(out: string, o: OutputOptions = {}): string {
  if (out.trim() === "") throw new OutputDirError(`-o ${q(out)}: empty output path (an unset variable?)`);
  const abs = path.resolve(out);
  const protectedWhy = protectedReason(abs);
  if (protectedWhy) throw new OutputDirError(`-o ${out}: refusing to replace ${protectedWhy}`);
  const input = inputWithin(abs, o.inputs ?? []);
  if (input !== undefined)
    throw new OutputDirError(`-o ${out}: contains ${input}, an input of this build; choose another folder`);
  const kind = classify(abs);
  if (kind.kind === "foreign" && !o.force)
    throw new OutputDirError(`-o ${out}: ${kind.why}; not replacing it (choose another path, or --force)`);
  checkCreatable(abs, out);
  return abs;
}

/**
 * The first of `inputs` that `target` is or holds, compared as given and where links lead; else undefined. An output
 * there would replace what the command reads, so it is refused even with --force (this file's -o, and the --json /
 * --output files of cli/output-file.ts).
 */
export function inputWithin(target: string, inputs: readonly string[]): string | undefined {
  // (The target resolved once, not once an input: filesIn of a large --tokenizer folder is thousands of them.)
  const abs = path.resolve(target);
  const real = realOrSelf(target);
  return inputs.find((input) => isInside(path.resolve(input), abs) || isInside(realOrSelf(input), real));
}

/**
 * The entries of folder `dir` that are not folders: a checkpoint's or an engine's files and links, which a command
 * reads as its inputs (none when it cannot be listed: reading the folder says why). Its subfolders are left out, so
 * that an earlier output of ours inside it (`-o CHECKPOINT/engine`) may still be replaced.
 */
export function filesIn(dir: string): string[] {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return [];
  }
  return entries.filter((e) => !e.isDirectory()).map((e) => path.join(dir, e.name));
}

/** The directory a build is being written into, moved to its target by commit(). */
export class OutputDir {
  readonly target: string;
  readonly tmp: string;
  private createdParents: string[] = [];
  private done = false;
  private stopSignals: () => void = () => {};
  private readonly onExit = () => this.discard();

  constructor(
    readonly out: string,
    private readonly o: OutputOptions = {},
  ) {
    this.target = checkOutputTarget(out, o);
    this.createdParents = makeParents(path.dirname(this.target), out);
    try {
      this.tmp = fs.mkdtempSync(`${this.target}.tmp-${process.pid}-`);
    } catch (e) {
      this.removeParents();
      throw new OutputDirError(`-o ${out}: cannot create a folder beside it: ${errText(e)}`);
    }
    this.stopSignals = cleanUpOnSignal(() => this.discard());
    process.once("exit", this.onExit);
  }

  /** Moves the complete build into place, replacing what is there only if that is still allowed. */
  commit(): void {
    try {
      const kind = classify(this.target);
      if (kind.kind === "foreign" && !this.o.force)
        throw new OutputDirError(
          `-o ${this.out}: ${kind.why} (appeared during the build); not replacing it (choose another path, or --force)`,
        );
      if (kind.kind === "missing") {
        fs.renameSync(this.tmp, this.target);
      } else {
        const old = freshName(`${this.target}.old-${process.pid}`);
        fs.renameSync(this.target, old);
        try {
          fs.renameSync(this.tmp, this.target);
        } catch (e) {
          fs.renameSync(old, this.target);
          throw e;
        }
        fs.rmSync(old, { recursive: true, force: true });
      }
      this.done = true;
    } finally {
      this.discard();
    }
  }

  /** Removes the temporary folder (and parents this build created); the target is left as it was. */
  discard(): void {
    this.stopSignals();
    process.off("exit", this.onExit);
    fs.rmSync(this.tmp, { recursive: true, force: true });
    if (!this.done) this.removeParents();
    this.createdParents = [];
  }

  private removeParents(): void {
    for (const d of [...this.createdParents].reverse()) {
      try {
        fs.rmdirSync(d);
      } catch {
        break; // not empty any more: someone else is using it
      }
    }
  }
}

/** `prefix-<n>` for the first n where nothing exists yet. */
function freshName(prefix: string): string {
  for (let n = 0; ; n++) {
    const p = `${prefix}-${n}`;
    if (!fs.existsSync(p) && !isLink(p)) return p;
  }
}

/** Whether p is a symbolic link (dangling or not); false when nothing is there. */
export function isLink(p: string): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}

/** Returns a yield point for long synchronous writes, so SIGINT/SIGTERM handlers get to run. */
export function yieldToSignals(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * The system's own folder: its entries are devices and kernel links (/dev/stdout), never a build's output. (/proc and
 * /sys need no entry: nothing can be created there, which checkCreatable reports.)
 */
const SYSTEM_DIRS = ["/dev"];

function protectedReason(abs: string): string | null {
  const cwd = process.cwd();
  if (abs === path.parse(abs).root) return "the root directory";
  // `-o /dev/null --force` (a build whose output is not wanted) used to rename /dev/null away and put the engine
  // folder in its place, as root. A device, FIFO or socket is never a file the user asked to replace.
  const st = lstatOrNull(abs);
  if (st && !st.isFile() && !st.isDirectory() && !st.isSymbolicLink()) return "a device, FIFO or socket";
  const real = path.join(realOrSelf(path.dirname(abs)), path.basename(abs));
  for (const d of SYSTEM_DIRS)
    if ((isInside(abs, d) || isInside(real, d)) && !isInside(real, "/dev/shm"))
      return `a system path under ${d}`;
  for (const home of [os.homedir(), process.env.HOME].filter((h): h is string => !!h))
    if (samePath(abs, home)) return "your home folder";
  if (samePath(abs, cwd)) return "the current directory";
  if (isInside(cwd, abs) || isInside(realOrSelf(cwd), realOrSelf(abs)))
    return "an ancestor of the current directory";
  return null;
}

function classify(abs: string): { kind: Kind; why?: string } {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(abs);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return { kind: "missing" }; // checkCreatable says why
    throw new OutputDirError(`-o ${abs}: ${errText(e)}`);
  }
  if (st.isSymbolicLink()) return { kind: "foreign", why: "exists and is a symbolic link" };
  if (!st.isDirectory()) return { kind: "foreign", why: "exists and is a file, not a tsllm engine" };
  let names: string[];
  try {
    names = fs.readdirSync(abs);
  } catch (e) {
    throw new OutputDirError(`-o ${abs}: ${errText(e)}`);
  }
  if (names.length === 0) return { kind: "empty" };
  const owned = ownedFiles(abs);
  if (!owned)
    return { kind: "foreign", why: "is a folder with files in it that is not a tsllm engine or ONNX export" };
  const foreign = names.filter((n) => !owned.has(n) || !fs.lstatSync(path.join(abs, n)).isFile());
  if (foreign.length > 0)
    return {
      kind: "foreign",
      why: `is a tsllm output but also holds ${foreign.length} other file(s) (${foreign.slice(0, 3).join(", ")}${foreign.length > 3 ? ", …" : ""})`,
    };
  return { kind: "ours" };
}

/** The files a tsllm engine or ONNX directory at `dir` consists of, or null when it is not one. */
function ownedFiles(dir: string): Set<string> | null {
  const engine = readJson(path.join(dir, "config.json")) as {
    format_version?: unknown;
    build?: unknown;
    ranks?: { file?: unknown }[];
    tokenizer?: { files?: unknown };
  } | null;
  if (
    engine &&
    typeof engine.format_version === "number" &&
    typeof engine.build === "object" &&
    Array.isArray(engine.ranks)
  )
    return new Set([
      "config.json",
      ...ENGINE_EXTRA_FILES,
      ...plainNames(engine.ranks.map((r) => r?.file)),
      ...plainNames(Array.isArray(engine.tokenizer?.files) ? engine.tokenizer.files : []),
    ]);
  const onnx = readJson(path.join(dir, "onnx.json")) as {
    format?: unknown;
    ranks?: { file?: unknown; data?: unknown }[];
  } | null;
  if (onnx && onnx.format === "tsllm-onnx" && Array.isArray(onnx.ranks))
    return new Set(["onnx.json", ...plainNames(onnx.ranks.flatMap((r) => [r?.file, r?.data]))]);
  return null;
}

function plainNames(xs: unknown[]): string[] {
  return xs.filter((x): x is string => typeof x === "string" && isPlainFileName(x));
}

function readJson(file: string): unknown {
  try {
    const st = fs.lstatSync(file);
    if (!st.isFile() || st.size > 64 << 20) return null;
    return JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    return null;
  }
}

/** Fails at once when the target's parent cannot hold a new folder (e.g. under /proc, read-only). */
function checkCreatable(abs: string, out: string): void {
  let dir = path.dirname(abs);
  while (!fs.existsSync(dir)) dir = path.dirname(dir);
  if (!fs.statSync(dir).isDirectory()) throw new OutputDirError(`-o ${out}: ${dir} is not a directory`);
  const why = cannotCreateIn(dir);
  if (why) throw new OutputDirError(`-o ${out}: cannot create a folder in ${dir}: ${why}`);
}

/**
 * Why nothing can be created in the folder `dir` (read-only, under /proc), found by creating a probe folder there and
 * removing it; undefined when it can. Also cli/output-file.ts's, so that a --json file is refused before the run.
 */
export function cannotCreateIn(dir: string): string | undefined {
  let probe: string;
  try {
    probe = fs.mkdtempSync(path.join(dir, ".tsllm-probe-"));
  } catch (e) {
    return errText(e);
  }
  fs.rmdirSync(probe);
  return undefined;
}

/** mkdir -p one level at a time (Node's recursive mkdir spins on /proc); returns what it created. */
function makeParents(dir: string, out: string): string[] {
  const missing: string[] = [];
  for (let d = dir; !fs.existsSync(d); d = path.dirname(d)) missing.unshift(d);
  const made: string[] = [];
  for (const d of missing) {
    try {
      fs.mkdirSync(d);
      made.push(d);
    } catch (e) {
      for (const m of made.reverse()) fs.rmdirSync(m);
      throw new OutputDirError(`-o ${out}: cannot create ${d}: ${errText(e)}`);
    }
  }
  return made;
}

function isInside(child: string, parent: string): boolean {
  const rel = path.relative(parent, child);
  return rel === "" || (rel !== ".." && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

function samePath(a: string, b: string): boolean {
  return path.resolve(a) === path.resolve(b) || realOrSelf(a) === realOrSelf(b);
}

function lstatOrNull(p: string): fs.Stats | null {
  try {
    return fs.lstatSync(p);
  } catch {
    return null;
  }
}

function realOrSelf(p: string): string {
  try {
    return fs.realpathSync(path.resolve(p));
  } catch {
    return path.resolve(p);
  }
}

function errText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code
    ? `${err.code} (${err.message.replace(/^[A-Z]+: /, "").split(",")[0]})`
    : String(err.message ?? e);
}
