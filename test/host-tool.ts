// Builds and runs native/tools/*.cc with the host C++ compiler (no CUDA), for CPU tests of the runtime's
// host-only parts: engine_check (the header reader), file_pass (the weight pass's reads and hashing), step_choice
// (the step tuner's candidate rules).
// Asynchronously: a synchronous child process blocks the test worker's event loop (vitest's RPC times out
// on a loaded machine).
import { execFile, spawnSync } from "node:child_process";
import * as path from "node:path";
import { REPO, tmpDir } from "./fixtures.ts";

/** The host C++ compiler, or undefined (the tests that need one are skipped, saying so). */
export const cxx = ["c++", "g++", "clang++"].find((c) => spawnSync(c, ["--version"]).status === 0);

/** Runs a program; resolves with its exit status and output. */
export function runTool(
  file: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) =>
    execFile(file, args, { encoding: "utf8", env: { ...process.env, ...env } }, (e, stdout, stderr) =>
      resolve({ status: e ? (typeof e.code === "number" ? e.code : 1) : 0, stdout, stderr }),
    ),
  );
}

/** Compiles native/tools/<name>.cc with the runtime sources given (relative to native/src/runtime). */
export async function buildHostTool(
  name: string,
  runtimeSources: string[],
  libs: string[] = [],
): Promise<string> {
  if (!cxx) throw new Error("no C++ compiler (c++, g++, clang++)");
  const out = path.join(tmpDir(`tsllm-${name}-`), name);
  const src = path.join(REPO, "native");
  const r = await runTool(cxx, [
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
  if (r.status !== 0) throw new Error(`${cxx} ${name}.cc failed:\n${r.stderr}`);
  return out;
}
