// Shared CLI plumbing: one-line errors and a non-zero exit, never a stack trace for user mistakes.
import { InvalidArgumentError } from "commander";

export async function main(fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    process.stderr.write(`error: ${msg.split("\n")[0]}\n`);
    if (process.env.TSLLM_DEBUG && e instanceof Error) process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  }
}

export function int(name: string) {
  return (v: string): number => {
    if (!/^-?\d+$/.test(v)) throw new InvalidArgumentError(`${name} must be an integer, got "${v}"`);
    return Number(v);
  };
}

export function float(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got "${v}"`);
    return n;
  };
}

export function list(v: string, prev: string[] = []): string[] {
  return [...prev, ...v.split(",").filter(Boolean)];
}

export function fmtBytes(n: number): string {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i ? 2 : 0)} ${u[i]}`;
}

/** "1,2,3" → [1, 2, 3]; names the flag and the bad entry otherwise. */
export function parseIds(s: string, flag: string): number[] {
  return s.split(",").map((t) => {
    if (!/^\d+$/.test(t.trim())) throw new Error(`${flag}: "${t}" is not a token id`);
    return Number(t);
  });
}
