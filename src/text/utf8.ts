// Text files read as Python's open(encoding="utf-8") and transformers read them: bytes that are not UTF-8 are
// refused. Node's "utf8" decoding replaces them with U+FFFD without a word, so a prompt or chat message would be
// tokenized as another text than the file holds.
import { isUtf8 } from "node:buffer";
import * as fs from "node:fs";

/**
 * Why a JSON text starting with a UTF-8 byte order mark (Windows editors add one) is refused: JSON.parse's own
 * message names an invisible character, and Python's json.loads (transformers, trtllm-bench) refuses it too.
 */
export const BOM_REFUSAL =
  "starts with a UTF-8 byte order mark, which JSON does not allow: save it without one";

/** The line (from 1) of the first bytes of `buf` that are not UTF-8, or undefined when it is all UTF-8. */
export function firstNonUtf8Line(buf: Buffer): number | undefined {
  if (isUtf8(buf)) return undefined;
  let line = 0;
  for (const text of utf8Lines(buf)) {
    line++;
    if (text === null) return line;
  }
  return undefined; // (not reached: some line holds the bytes isUtf8 refused)
}

/**
 * The lines of `buf` (split at "\n", a "\r" before it kept), each decoded on its own, null where it is not UTF-8 (no
 * byte of a multi-byte character is "\n", 0x0a, so each line decodes on its own).
 * One string of the whole file cannot be made past V8's longest string (2^29 - 24 characters, ~512 MB).
 */
export function* utf8Lines(buf: Buffer): Generator<string | null> {
  for (let start = 0; start <= buf.length; ) {
    const nl = buf.indexOf(0x0a, start);
    const end = nl < 0 ? buf.length : nl;
    const line = buf.subarray(start, end);
    yield isUtf8(line) ? line.toString("utf8") : null;
    start = end + 1;
  }
}

/**
 * A file of text (0: stdin) as UTF-8, refused in one line naming `where` (and the line) when it is not UTF-8 or is a
 * folder (which was Node's bare "EISDIR: illegal operation on a directory, read", naming no file).
 */
export function readUtf8File(file: string | 0, where: string): string {
  // (One stat answers both: a folder, a device.)
  const st = file === 0 ? undefined : fs.statSync(file, { throwIfNoEntry: false });
  if (st?.isDirectory()) throw new Error(`${where}: is a directory; name a file`);
  const device = st && deviceKind(st);
  if (device) throw new Error(`${where}: ${device}`);
  const buf = fs.readFileSync(file);
  const bad = firstNonUtf8Line(buf);
  if (bad !== undefined) throw new Error(`${where}:${bad}: not UTF-8 text`);
  return buf.toString("utf8");
}

/** deviceProblem's answer. */
export const DEVICE_REFUSAL =
  "is a device or socket (a terminal, /dev/zero), not a file: reading it would never end";

/**
 * Why the input `file` cannot be read whole, when it is a device or a socket: reading one never ends (a terminal,
 * `/dev/stdin` typed at, waited for lines with no word of why; /dev/zero grew the process past 24 GB in 5 minutes).
 * A FIFO is read (`--dataset <(…)`): it ends when its writer closes. Undefined for anything else (a read that fails
 * says why itself).
 */
export function deviceProblem(file: string): string | undefined {
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(file, { throwIfNoEntry: false });
  } catch {
    return undefined;
  }
  return st && deviceKind(st);
}

/** deviceProblem's answer for what a stat found. */
function deviceKind(st: fs.Stats): string | undefined {
  return st.isCharacterDevice() || st.isBlockDevice() || st.isSocket() ? DEVICE_REFUSAL : undefined;
}
