// Weight bytes one decode step of a batch reads from GPU memory, for tsllm-bench's roofline: every weight once
// in its stored dtype (quantised values and their scales), except what the kernels never touch:
//   - embedding tables: only the batch's rows are gathered;
//   - moe experts (w1, w3, w2 and their scales): only the experts the batch is routed to. At batch 1 that is
//     top_k of num_experts per layer (the gemv path reads nothing else); for a batch of B tokens it is the
//     expected number of distinct experts under uniform routing, E·(1 − (1 − K/E)^B) (64 tokens on Mixtral's
//     8 experts, top-2: all of them, to 1e-8).
import type { EngineHeader } from "../engine/format.ts";
import { DTYPE_BYTES } from "../ir/types.ts";

export interface StepBytes {
  /** Weight bytes one decode step reads. */
  bytes: number;
  /** All weight bytes of the rank (what a dense roofline would count). */
  totalBytes: number;
  /** Stored expert bytes, and the fraction of them the step reads (1 without moe nodes). */
  expertBytes: number;
  expertFraction: number;
}

export function decodeStepWeightBytes(h: EngineHeader, batch: number): StepBytes {
  const values = new Map(h.values.map((v) => [v.id, v]));
  const bytesOf = (id: number) => {
    const v = values.get(id)!;
    return (
      v.shape.reduce<number>((a, d) => a * (typeof d === "number" ? d : d.max), 1) * DTYPE_BYTES[v.dtype]
    );
  };
  const rowBytes = (id: number) => {
    const v = values.get(id)!;
    return bytesOf(id) / (typeof v.shape[0] === "number" ? v.shape[0] : v.shape[0].max);
  };
  const gathered = new Set<number>();
  const experts = new Map<number, number>(); // expert weight → fraction read
  let fraction = 1;
  for (const n of h.nodes) {
    if (n.op === "embedding" && n.inputs[1] !== null) gathered.add(n.inputs[1]);
    if (n.op === "moe") {
      const E = Number(n.attrs.num_experts);
      const K = Number(n.attrs.top_k);
      fraction = 1 - (1 - K / E) ** batch;
      for (const id of n.inputs.slice(2)) if (id !== null) experts.set(id, fraction);
    }
  }
  let bytes = 0;
  let total = 0;
  let expertBytes = 0;
  for (const w of h.weights) {
    const b = bytesOf(w.value);
    total += b;
    if (gathered.has(w.value)) bytes += Math.min(batch, b / rowBytes(w.value)) * rowBytes(w.value);
    else if (experts.has(w.value)) {
      expertBytes += b;
      bytes += b * experts.get(w.value)!;
    } else bytes += b;
  }
  return { bytes, totalBytes: total, expertBytes, expertFraction: experts.size ? fraction : 1 };
}
