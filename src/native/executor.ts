// Placeholder until the native runtime binding lands (src/native/binding.ts).
import type { Executor } from "../executor/types.ts";

export function cudaAvailable(): boolean {
  return false;
}

export function openCudaExecutor(_dir: string, _o: { verify?: boolean }): Executor {
  throw new Error(
    "native runtime not built: run npm run build:native on a machine with CUDA 13 (nvcc, cuBLASLt)",
  );
}
