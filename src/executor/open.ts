// Picks the executor for --device: the native CUDA runtime when asked (or, with auto, when built and a
// GPU is present), else the CPU reference executor.
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
  let native: typeof import("../native/executor.ts") | null = null;
  try {
    native = await import("../native/executor.ts");
    // Asked for by name, an addon that is not built (or does not load) is refused here, saying which flag
    // (loadAddon throws why; once loaded it is cached).
    if (o.device === "cuda") (await import("../native/binding.ts")).loadAddon();
  } catch (e) {
    if (o.device === "cuda") throw new Error(`--device cuda: ${(e as Error).message.split("\n")[0]}`);
  }
  if (native && (o.device === "cuda" || native.cudaAvailable()))
    return native.openCudaExecutor(dir, { verify: o.verify, fp8ContextFmha: o.fp8ContextFmha });
  return ReferenceExecutor.load(dir, { verify: o.verify, onLoadBytes: o.onLoadBytes });
}
