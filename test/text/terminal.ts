// A scripted terminal for tsllm-run's interactive chat (src/cli/run-text.ts interactiveChat's io).
import { PassThrough } from "node:stream";

/**
 * A terminal whose user answers the n-th "> " prompt with lines[n] (a string: that line; null: Ctrl-D; past the
 * end: nothing, so a question asked then stays pending). `onWrite` sees each write to stdout.
 */
export function terminal(lines: (string | null)[], onWrite: (s: string) => void = () => {}) {
  const input = new PassThrough();
  const output = new PassThrough();
  let text = "";
  let prompts = 0;
  output.on("data", (d: Buffer) => {
    const s = String(d);
    text += s;
    onWrite(s);
    if (s !== "> ") return;
    const line = lines[prompts++];
    if (line === undefined) return;
    setImmediate(() => (line === null ? input.end() : input.write(`${line}\n`)));
  });
  return { io: { input, output }, text: () => text, prompts: () => prompts };
}
