// Write worker of the engine writer (src/engine/file-writer.ts): positional writes of a batch of views of
// SharedArrayBuffers (nothing is copied), in calls of `call` bytes, one batch after another on this one
// thread. Plain JavaScript so it starts without the TypeScript loader.
//
// Early writeback: every FLUSH_BYTES written to a file, an fdatasync of it starts on libuv's pool (while this
// thread goes on writing), so the disk writes the engine while the build still converts and hashes, instead of
// the whole engine sitting dirty in the page cache until the kernel's background threshold (10 % of RAM: more
// than a TinyLlama engine) or the user's sync. Measured here (TinyLlama 2.05 GB, disk ~0.5 GB/s): build 3.7 s
// + 3.5-4.2 s of sync before, the flush overlapped with the build after. The flushes are advisory (the build
// never promised durability), so their errors are ignored; at most one is in flight per file.
import { fdatasync, writeSync } from "node:fs";
import { parentPort } from "node:worker_threads";

const FLUSH_BYTES = 64 << 20;
const files = new Map(); // fd -> { unflushed bytes, flushing }

function written(fd, n) {
  let f = files.get(fd);
  if (!f) files.set(fd, (f = { unflushed: 0, flushing: false }));
  f.unflushed += n;
  if (f.flushing || f.unflushed < FLUSH_BYTES) return;
  f.unflushed = 0;
  f.flushing = true;
  fdatasync(fd, () => {
    f.flushing = false;
  });
}

parentPort.on("message", ({ id, fd, bufs, pos, call }) => {
  try {
    for (const b of bufs)
      for (let off = 0; off < b.length; ) {
        const n = writeSync(fd, b, off, Math.min(call, b.length - off), pos);
        off += n;
        pos += n;
        written(fd, n);
      }
    parentPort.postMessage({ id });
  } catch (e) {
    parentPort.postMessage({ id, error: e instanceof Error ? e.message : String(e) });
  }
});
