// FP8 quantisation worker of the engine writer (src/quant/fp8-pool.ts): rows [begin, end) of a weight given
// as views of SharedArrayBuffers (sources, values and scales: nothing is copied) through the same loops as
// the main thread (src/quant/fp8-kernel.mjs). Plain JavaScript so it starts without the TypeScript loader.
import { parentPort } from "node:worker_threads";
import { quantizeFp8RowRange } from "../fp8-kernel.mjs";

let tables = null;
parentPort.on("message", (m) => {
  if (m.tables) {
    tables = m.tables;
    return;
  }
  quantizeFp8RowRange(m.parts, m.k, m.begin, m.end, m.values, m.scales, tables);
  parentPort.postMessage(m.id);
});
