// Write worker of the engine writer (src/engine/file-writer.ts): positional writes of a batch of views of
// SharedArrayBuffers (nothing is copied), in calls of `call` bytes, one batch after another on this one
// thread. Plain JavaScript so it starts without the TypeScript loader.
import { writeSync } from "node:fs";
import { parentPort } from "node:worker_threads";

parentPort.on("message", ({ id, fd, bufs, pos, call }) => {
  try {
    for (const b of bufs)
      for (let off = 0; off < b.length; ) {
        const n = writeSync(fd, b, off, Math.min(call, b.length - off), pos);
        off += n;
        pos += n;
      }
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
});
