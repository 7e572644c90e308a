// Shared pieces of the reader fuzz suites (test/fuzz/*.test.ts): one fixed seed, a scratch folder, and a
// guard on fs.readSync that catches a read sized by an untrusted number (a length or offset taken from
// the file and not checked against its size): such a read asks for bytes past the end of the file.
import * as fs from "node:fs";
import { createRequire, syncBuiltinESMExports } from "node:module";
import * as path from "node:path";
import { expect } from "vitest";
import { tmpDir } from "../fixtures.ts";

/** Every fuzz suite runs from this seed, so a failure reproduces; fast-check prints the counterexample. */
export const FUZZ_SEED = 20261202;

const fsCjs = createRequire(import.meta.url)("node:fs") as typeof fs;

export interface ReadGuard {
  /** Reads that asked for bytes past the end of the file, described. */
  violations: string[];
  restore(): void;
}

/** Wraps fs.readSync (for the ESM importers too) to record positioned reads past the end of the file. */
export function guardReads(): ReadGuard {
  const orig = fsCjs.readSync;
  const violations: string[] = [];
  const wrapped = (fd: number, buf: NodeJS.ArrayBufferView, ...rest: unknown[]) => {
    // readSync(fd, buffer, offset, length, position) or readSync(fd, buffer, { offset, length, position })
    let length: number | undefined;
    let position: number | bigint | null | undefined;
    if (typeof rest[0] === "object" && rest[0] !== null) {
      const o = rest[0] as { offset?: number; length?: number; position?: number | null };
      length = o.length ?? buf.byteLength - (o.offset ?? 0);
      position = o.position;
    } else {
      length = (rest[1] as number | undefined) ?? buf.byteLength - ((rest[0] as number | undefined) ?? 0);
      position = rest[2] as number | null | undefined;
    }
    if (typeof position === "number" && length > 0) {
      const size = fsCjs.fstatSync(fd).size;
      if (position + length > size)
        violations.push(`read of ${length} bytes at ${position} in a ${size}-byte file`);
    }
    return (orig as (...a: unknown[]) => number)(fd, buf, ...rest);
  };
  fsCjs.readSync = wrapped as typeof fs.readSync;
  syncBuiltinESMExports();
  return {
    violations,
    restore() {
      fsCjs.readSync = orig;
      syncBuiltinESMExports();
    },
  };
}

/**
 * A scratch folder for one suite, in memory (/dev/shm) where there is one: thousands of small files are
 * written per suite, and a shared disk makes each write cost milliseconds instead of ~0.1 ms.
 */
export function scratch(name: string): string {
  let root: string;
  try {
    root = fs.mkdtempSync("/dev/shm/tsllm-fuzz-");
  } catch {
    root = tmpDir("tsllm-fuzz-");
  }
  const d = path.join(root, name);
  fs.mkdirSync(d);
  return d;
}

/**
 * Asserts that `e` is one of our error types with a one-line message: what a CLI prints as `error: …`.
 * Anything else (TypeError, RangeError, a JSON SyntaxError, an assertion) fails the property.
 */
export function expectOurError(e: unknown, types: (abstract new (...a: never[]) => Error)[]): void {
  if (!types.some((t) => e instanceof t)) throw e;
  const msg = (e as Error).message;
  expect(msg.length).toBeGreaterThan(0);
  expect(msg).not.toContain("\n");
}

/**
 * Lets the event loop run every `every` cases: a fuzz run is thousands of synchronous cases, and a worker
 * that never yields cannot answer vitest's RPC (on a loaded machine that ends in "Timeout calling
 * onTaskUpdate").
 */
export async function breathe(cases: number, every = 100): Promise<void> {
  if (cases % every === 0) await new Promise((r) => setImmediate(r));
}

export function removeScratch(dir: string): void {
  fs.rmSync(path.dirname(dir), { recursive: true, force: true });
}

/** Cases run per suite, printed at the end so the closing note can quote them. */
export function report(suite: string, cases: number, loaded: number, secs: number): void {
  process.stdout.write(
    `fuzz ${suite}: ${cases} generated cases (${loaded} loaded, ${cases - loaded} refused with our error) in ${secs.toFixed(1)} s, seed ${FUZZ_SEED}\n`,
  );
}
