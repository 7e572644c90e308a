// Builds one of native/tools/*.cc with the host C++ compiler (no CUDA), for CPU tests of the runtime's
// host-only parts: engine_check (the header reader), file_pass (the weight pass's reads and hashing).
import { execFileSync, spawnSync } from "node:child_process";
import * as path from "node:path";
import { REPO, tmpDir } from "./fixtures.ts";

/** The host C++ compiler, or undefined (the tests that need one are skipped, saying so). */
export const cxx = ["c++", "g++", "clang++"].find((c) => spawnSync(c, ["--version"]).status === 0);

/** Compiles native/tools/<name>.cc with the runtime sources given (relative to native/src/runtime). */
export function buildHostTool(name: string, runtimeSources: string[], libs: string[] = []): string {
  if (!cxx) throw new Error("no C++ compiler (c++, g++, clang++)");
  const out = path.join(tmpDir(`tsllm-${name}-`), name);
  const src = path.join(REPO, "native");
  execFileSync(cxx, [
    "-std=c++17",
    "-O1",
    "-pthread",
    `-I${path.join(src, "src")}`,
    "-o",
    out,
    path.join(src, `tools/${name}.cc`),
    ...runtimeSources.map((f) => path.join(src, "src/runtime", f)),
    ...libs,
  ]);
  return out;
}
