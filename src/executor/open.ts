// Picks the executor for --device: the native CUDA runtime when asked (or, with auto, when it is built and
// sees a CUDA device), else the CPU reference executor.
import { cudaModuleFor } from "../native/cuda-module.ts";
import { ReferenceExecutor } from "./reference.ts";
import type { Executor } from "./types.ts";

export async function openExecutor(
  dir: string,
  o: {
    device: string;
    verify?: boolean;
    onLoadBytes?: (done: number, total: number) => void;
    /** cuda: FP8 KV cache context attention (CudaLoadOptions.fp8ContextFmha). */
    fp8ContextFmha?: "auto" | "on" | "off";
  },
): Promise<Executor> {
  if (o.device === "cpu")
    return ReferenceExecutor.load(dir, { verify: o.verify, onLoadBytes: o.onLoadBytes });
  const native = await cudaModuleFor(o.device, () => import("../native/executor.ts"));
  if (native) return native.openCudaExecutor(dir, { verify: o.verify, fp8ContextFmha: o.fp8ContextFmha });
  return ReferenceExecutor.load(dir, { verify: o.verify, onLoadBytes: o.onLoadBytes });
}
