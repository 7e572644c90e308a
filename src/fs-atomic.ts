// Writing a file whole or not at all: the bytes go to a fresh sibling, created exclusively (so no existing file,
// the user's or another run's, is ever reused), which is flushed and renamed over the target only once complete;
// if anything fails on the way, the sibling is removed and the target is as it was.
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

/** The signals whose default action would end the process mid-write. */
const CLEANUP_SIGNALS = ["SIGINT", "SIGTERM", "SIGHUP"] as const;

/**
 * While something half-written exists, catches SIGINT / SIGTERM / SIGHUP: `cleanup` removes it, then the signal is
 * raised again with the listeners gone, so the process ends as the signal says (exit 130 / 143). Returns the function
 * that stops listening (idempotent). Shared by writeWhole's siblings and the engine's temporary folder (OutputDir).
 */
export function cleanUpOnSignal(cleanup: () => void): () => void {
  const on = (sig: NodeJS.Signals) => {
    off();
    cleanup();
    process.kill(process.pid, sig);
  };
  const off = () => {
    for (const s of CLEANUP_SIGNALS) process.off(s, on);
  };
  for (const s of CLEANUP_SIGNALS) process.on(s, on);
  return off;
}

// A signal's default action ends the process at once, also in the middle of the (synchronous) write: Ctrl-C while
// `prepare-dataset --output` wrote a large dataset left its half-written sibling behind. So while a sibling exists
// the signals are caught; the handler runs once the write is over (the event loop is blocked until then) and removes
// any sibling still there.

/** Siblings being written now. */
const live = new Set<string>();
let unlisten: (() => void) | null = null;

export function writeWhole(target: string, write: (fd: number) => void): void {
  const tmp = path.join(
    path.dirname(target),
    `.${path.basename(target)}.tmp-${process.pid}-${crypto.randomBytes(4).toString("hex")}`,
  );
  // Listening before the sibling exists, so that no moment of its life is left to the default action.
  live.add(tmp);
  unlisten ??= cleanUpOnSignal(() => {
    unlisten = null;
    for (const t of live) fs.rmSync(t, { force: true });
  });
  let fd: number | undefined;
  let created = false;
  try {
    fd = fs.openSync(tmp, "wx");
    created = true;
    write(fd);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, target);
  } catch (e) {
    if (fd !== undefined) fs.closeSync(fd);
    // Only a sibling this call created (openSync's "wx" refuses an existing path, which stays as it is).
    if (created) fs.rmSync(tmp, { force: true });
    throw e;
  } finally {
    live.delete(tmp);
    // Stop listening only after the event loop has polled again (two check phases have a poll between them): a signal
    // that came during the write is delivered there, to the cleanup listener, rather than dropped with it.
    setImmediate(() =>
      setImmediate(() => {
        if (live.size > 0 || !unlisten) return;
        unlisten();
        unlisten = null;
      }),
    );
  }
}

/**
 * Runs a synchronous write of `file`. Node's message for a failed write (ENOSPC, EDQUOT, EFBIG, EIO) names no
 * file ("ENOSPC: no space left on device, write"): the error is given the file's name in front, as the engine's
 * rank files have it. Other errors (a checkpoint read inside `fn`: syscall "read") pass as they are.
 */
export function namingWriteErrors<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.syscall === "write" && !err.message.includes(file)) err.message = `${file}: ${err.message}`;
    throw e;
  }
}
