// Hash worker of the engine writer (src/engine/hash-pool.ts): SHA-256 of one chunk given as views of
// SharedArrayBuffers (nothing is copied). Plain JavaScript so it starts without the TypeScript loader.
import { createHash } from "node:crypto";
import { parentPort } from "node:worker_threads";

parentPort.on("message", ({ id, pieces }) => {
  const h = createHash("sha256");
  for (const p of pieces) h.update(p);
  const digest = h.digest();
  parentPort.postMessage({ id, digest }, [digest.buffer]);
});
