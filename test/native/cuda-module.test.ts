// cudaModuleFor, the one decision between the CUDA runtime and the CPU reference executor (openExecutor and
// openBatchManager): a module that imports and sees a device is taken; one that says why not, or whose import
// throws (its first line kept), sends auto to the CPU and refuses --device cuda in one line naming the flag.
import { describe, expect, it } from "vitest";
import { cudaModuleFor } from "../../src/native/cuda-module.ts";

const says = (why: string | undefined) => ({ cudaUnavailable: () => why, tag: "m" });

describe("cudaModuleFor", () => {
  it("takes the module when it says CUDA can run, for auto and cuda", async () => {
    for (const device of ["auto", "cuda"])
      expect(await cudaModuleFor(device, async () => says(undefined))).toEqual({
        cudaUnavailable: expect.any(Function),
        tag: "m",
      });
  });

  it("auto falls back (undefined) where cuda is refused with the module's reason", async () => {
    const why = "no CUDA device is visible to this process (CUDA_VISIBLE_DEVICES, driver)";
    expect(await cudaModuleFor("auto", async () => says(why))).toBeUndefined();
    await expect(cudaModuleFor("cuda", async () => says(why))).rejects.toThrow(`--device cuda: ${why}`);
  });

  it("an import that throws is the reason, its first line only", async () => {
    const load = async (): Promise<ReturnType<typeof says>> => {
      throw new Error("addon built for another ABI\n    at stack line");
    };
    expect(await cudaModuleFor("auto", load)).toBeUndefined();
    const e = await cudaModuleFor("cuda", load).catch((x: Error) => x);
    expect((e as Error).message).toBe("--device cuda: addon built for another ABI");
  });
});
