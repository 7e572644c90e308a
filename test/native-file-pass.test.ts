// The GPU loader's read-and-hash pass (native/src/runtime/file_pass.cc, the pass upload.cc feeds pinned
// buffers from) on the CPU, through native/tools/file_pass.cc built here with the host compiler: on a file
// of several hash chunks, its digest equals the definition (src/engine/hash.ts) whether chunks are read
// with O_DIRECT, through the page cache or both, on one thread or several, and a byte flipped in the last
// MB changes it. (The GPU suite, test-gpu/load.test.ts, checks the same through tsllm-run with the file named.)
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { HASH_CHUNK_BYTES } from "../src/engine/hash.ts";
import { tmpDir } from "./fixtures.ts";
import { buildHostTool, cxx, runTool } from "./host-tool.ts";

if (!cxx)
  console.warn("native-file-pass.test.ts: SKIPPED: no C++ compiler (c++, g++, clang++) to build file_pass");

let tool = "";
beforeAll(async () => {
  if (!cxx) return;
  tool = await buildHostTool("file_pass", ["file_pass.cc"], ["-ldl"]);
}, 300_000);

/** The definition, written out: SHA-256 over the SHA-256 of each chunk. */
function reference(b: Uint8Array, chunk = HASH_CHUNK_BYTES): string {
  const outer = createHash("sha256");
  for (let o = 0; o < b.length; o += chunk)
    outer.update(
      createHash("sha256")
        .update(b.subarray(o, o + chunk))
        .digest(),
    );
  return outer.digest("hex");
}

async function pass(
  file: string,
  env: Record<string, string>,
  chunk?: number,
): Promise<{ sha256: string; line: string }> {
  const r = await runTool(tool, chunk ? [file, String(chunk)] : [file], env);
  const out = r.stdout.trim().split("\n");
  expect(r.status, r.stdout + r.stderr).toBe(0);
  return { sha256: out[0].replace(/^sha256 /, ""), line: out[1].replace(/^pass /, "") };
}

describe.skipIf(!cxx)("the native loader's read-and-hash pass (file_pass, no GPU)", () => {
  // 2 full chunks and a short one whose length is not a multiple of 4 KiB (the O_DIRECT tail).
  const data = Buffer.alloc(2 * HASH_CHUNK_BYTES + 12345);
  let x = 7;
  for (let i = 0; i < data.length; i++) data[i] = (x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 24;

  it("gives the definition's digest however chunks are read, and catches a flip in the last MB", async () => {
    const file = path.join(tmpDir(), "rank0.engine");
    fs.writeFileSync(file, data);
    const want = reference(data);
    const modes: Record<string, string>[] = [
      {}, // O_DIRECT for chunks the page cache lacks, pread for the rest
      { TSLLM_LOAD_DIRECT: "1", TSLLM_LOAD_THREADS: "3" },
      { TSLLM_LOAD_DIRECT: "0", TSLLM_LOAD_THREADS: "1" },
    ];
    for (const env of modes) {
      const r = await pass(file, env);
      expect(r.sha256, JSON.stringify(env)).toBe(want);
      expect(r.line).toMatch(/^0\.03 GiB in [\d.]+ s \([\d.]+ GB\/s\), \d+ threads, /);
      if (env.TSLLM_LOAD_THREADS) expect(r.line).toContain(`${env.TSLLM_LOAD_THREADS} threads`);
      if (env.TSLLM_LOAD_DIRECT === "0") expect(r.line).toContain("0.00 GiB direct / 0.03 GiB cached");
      // O_DIRECT is refused by some file systems (tmpfs before Linux 6.6): then the line says so.
      if (env.TSLLM_LOAD_DIRECT === "1")
        expect(r.line).toMatch(/0\.03 GiB direct \/ 0\.00 GiB cached|O_DIRECT off or refused here/);
    }
    // Small chunks: many per thread (both staging buffers in turn), an unaligned chunk size reads without O_DIRECT.
    for (const chunk of [65536, 5000])
      expect((await pass(file, { TSLLM_LOAD_THREADS: "2" }, chunk)).sha256).toBe(reference(data, chunk));

    data[data.length - 300_000] ^= 1;
    fs.writeFileSync(file, data);
    data[data.length - 300_000] ^= 1;
    for (const env of modes) expect((await pass(file, env)).sha256).not.toBe(want);
  }, 60_000);

  it("says which file it cannot read, in one line", async () => {
    const r = await runTool(tool, [path.join(tmpDir(), "missing.engine")]);
    expect(r.status).toBe(1);
    expect(r.stdout.trim()).toMatch(/^error .*missing\.engine: cannot stat$/);
  });
});
