// The one place that decides between the CUDA runtime and the CPU reference executor for --device.

/**
 * The CUDA runtime's module for --device cuda or auto, or undefined when auto is to take the CPU reference executor.
 * `load` imports the module (its import may itself fail: the addon's loader is inside it); the module then says why
 * CUDA cannot run here, if it cannot (the addon not built, not loading, of another ABI, or seeing no device).
 * --device cuda is refused then, in one line naming the flag.
 */
export async function cudaModuleFor<M extends { cudaUnavailable(): string | undefined }>(
  device: string,
  load: () => Promise<M>,
): Promise<M | undefined> {
  let module: M | undefined;
  let why: string | undefined;
  try {
    module = await load();
    why = module.cudaUnavailable();
  } catch (e) {
    why = (e as Error).message.split("\n")[0];
  }
  if (why === undefined) return module;
  if (device === "cuda") throw new Error(`--device cuda: ${why}`);
  return undefined;
}
