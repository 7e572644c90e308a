// Running a tsllm command in-process (tsllmCompile, tsllmTokenize, tsllmInspect, like tsllmRun in
// test/serving/run-main.test.ts): stdout and stderr captured, process.exit trapped (commander exits on a usage
// error), and the import that runs the command once on process.argv.
import { vi } from "vitest";

export interface Io {
  stdout: string;
  stderr: string;
}

/** Captures process.stdout / process.stderr writes until restore(). */
export function capture() {
  const io: Io = { stdout: "", stderr: "" };
  const out = vi.spyOn(process.stdout, "write").mockImplementation((s: string | Uint8Array) => {
    io.stdout += String(s);
    return true;
  });
  const err = vi.spyOn(process.stderr, "write").mockImplementation((s: string | Uint8Array) => {
    io.stderr += String(s);
    return true;
  });
  return {
    io,
    restore() {
      out.mockRestore();
      err.mockRestore();
    },
  };
}

/** What commander's process.exit(code) becomes while trapped. */
export class Exit extends Error {
  constructor(readonly code: number | undefined) {
    super(`process.exit(${code})`);
  }
}

/** Runs `fn` (a command on its argv) capturing its output: the output, and what it threw (null if nothing). */
export async function runCaptured(fn: () => Promise<void>): Promise<Io & { error: unknown }> {
  const c = capture();
  const exit = vi.spyOn(process, "exit").mockImplementation((code?: string | number | null) => {
    throw new Exit(code === null || code === undefined ? undefined : Number(code));
  });
  let error: unknown = null;
  try {
    await fn();
  } catch (e) {
    error = e;
  } finally {
    c.restore();
    exit.mockRestore();
  }
  return { ...c.io, error };
}

/**
 * Imports a command module with process.argv set to `argv` (the module runs the command on it once, through
 * main(): errors become one stderr line and exit code 1): the module, what it printed and the exit code it set.
 * process.exitCode is put back to undefined.
 */
export async function importMain<T>(
  load: () => Promise<T>,
  argv: string[],
): Promise<{ module: T; stdout: string; stderr: string; exitCode: typeof process.exitCode }> {
  const saved = process.argv;
  process.argv = argv;
  const c = capture();
  let module: T;
  try {
    module = await load();
  } finally {
    c.restore();
    process.argv = saved;
  }
  const exitCode = process.exitCode;
  process.exitCode = undefined;
  return { module, ...c.io, exitCode };
}

/** What runCommand saw: the output, the exit code main() set, and commander's exit ("exit N") if it exited. */
export interface CommandRun extends Io {
  exitCode: typeof process.exitCode;
  exit: string | undefined;
}

/**
 * Runs a command (a commander program's parseAsync, or the import of a module that runs main() on process.argv)
 * with its output captured, process.exit trapped as an "exit N" error, process.exitCode read and reset, and the
 * EPIPE listeners main() adds to stdout / stderr (one per run) removed again.
 */
export async function runCommand(fn: () => Promise<unknown>): Promise<CommandRun> {
  const outL = process.stdout.listeners("error");
  const errL = process.stderr.listeners("error");
  const c = capture();
  const exitSpy = vi.spyOn(process, "exit").mockImplementation((code?: string | number | null) => {
    throw new Error(`exit ${code}`);
  });
  process.exitCode = undefined;
  let exit: string | undefined;
  try {
    await fn();
  } catch (e) {
    exit = (e as Error).message;
  } finally {
    c.restore();
    exitSpy.mockRestore();
    for (const l of process.stdout.listeners("error"))
      if (!outL.includes(l)) process.stdout.off("error", l as never);
    for (const l of process.stderr.listeners("error"))
      if (!errL.includes(l)) process.stderr.off("error", l as never);
  }
  const exitCode = process.exitCode;
  process.exitCode = undefined;
  return { ...c.io, exitCode, exit };
}
