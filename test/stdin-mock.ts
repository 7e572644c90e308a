// `--chat -` / `--prompt-file -` style reads of stdin (fs.readFileSync(0)) in-process: a node:fs whose
// readFileSync(0) returns `stdin.text` while it is set (counting the reads), else the real call. Use from a test
// file's hoisted mock, which vitest requires to be written in that file:
//   const stdin = vi.hoisted(() => ({ text: null as string | null, reads: 0 }));
//   vi.mock("node:fs", async (orig) => (await import("./stdin-mock.ts")).fsWithStdin(await orig(), stdin));
import type * as Fs from "node:fs";

export interface FakeStdin {
  text: string | null;
  reads: number;
}

export function fsWithStdin(real: typeof Fs, stdin: FakeStdin) {
  const readFileSync = ((p: unknown, ...rest: unknown[]) => {
    if (p === 0 && stdin.text !== null) {
      stdin.reads++;
      return rest[0] === "utf8" ? stdin.text : Buffer.from(stdin.text);
    }
    return (real.readFileSync as (...a: unknown[]) => unknown)(p, ...rest);
  }) as typeof real.readFileSync;
  return { ...real, default: { ...real, readFileSync }, readFileSync };
}
