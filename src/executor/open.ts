// Picks the executor for --device: the native CUDA runtime when asked (or, with auto, when it is built and
// sees a CUDA device), else the CPU reference executor.
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
  // Why the CUDA runtime cannot run here: the addon not built, not loading, of another ABI, or seeing no device.
  let native: typeof import("../native/executor.ts") | null = null;
  let why: string | undefined;
  try {
    native = await import("../native/executor.ts");
    why = native.cudaUnavailable();
  } catch (e) {
    why = (e as Error).message.split("\n")[0];
  }
  if (native && why === undefined)
    return native.openCudaExecutor(dir, { verify: o.verify, fp8ContextFmha: o.fp8ContextFmha });
  // Asked for by name, it is refused in one line saying which flag.
  if (o.device === "cuda") throw new Error(`--device cuda: ${why}`);
  return ReferenceExecutor.load(dir, { verify: o.verify, onLoadBytes: o.onLoadBytes });
}
