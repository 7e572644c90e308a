// The step tuner's candidate rules (native/src/runtime/step_choice.h) on the CPU, through native/tools/step_choice.cc
// built here with the host compiler: which variants a decode graph's step tuning tries for a gemv pick (every one
// whose lone time is within `within` of the pick's) and for a fusion decision (the other side's fastest, unfused
// as -1 or the best fused variant, and the pick's own side within `close`), and that only the keys a capture looked
// up are offered, and a decided one never again. (The GPU side: test-gpu runs every engine with step tuning on.)
import { spawn } from "node:child_process";
import { beforeAll, describe, expect, it } from "vitest";
import { buildHostTool, cxx } from "./host-tool.ts";

if (!cxx)
  console.warn(
    "native-step-choice.test.ts: SKIPPED: no C++ compiler (c++, g++, clang++) to build step_choice",
  );

let tool = "";
beforeAll(async () => {
  if (!cxx) return;
  tool = await buildHostTool("step_choice", []);
}, 300_000);

/** The tool's output lines for a script of commands (its header says what each does). */
function run(script: string[]): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const p = spawn(tool, [], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    p.on("error", reject);
    p.on("close", (code) =>
      code === 0 ? resolve(out.trim().split("\n")) : reject(new Error(`rc ${code}: ${err}`)),
    );
    p.stdin.end(`${script.join("\n")}\n`);
  });
}

// Lone times (ms) of one shape: -1 the unfused pair, the rest fused (or plain gemv) variants.
const times = "-1:0.0208 0:0.0230 3:0.0199 4:0.0196 5:0.0201 7:0.0203 8:0.0250";

describe.skipIf(!cxx)("step tuning's candidates (step_choice.h, no GPU)", () => {
  it("with a cap (TSLLM_GEMM_STEP's cuBLASLt shapes: 3), only the fastest alone, in that order", async () => {
    const out = await run([
      // key 1: pick 0 at 1.00; 1.09, 1.01, 1.03, 1.02 within 10 %, 1.20 not; timed in no particular order
      ...[
        "timed 1 0 1.00",
        "timed 1 1 1.09",
        "timed 1 2 1.01",
        "timed 1 3 1.20",
        "timed 1 4 1.03",
        "timed 1 5 1.02",
      ],
      ...["pick 1 0", "record 1", "note 1", "record 0"],
      "offer 0.10 -1 3",
      "offer 0.10 -1 0", // no cap: every one within 10 %, in timing order
      "offer 0.10 -1 9", // a cap above the count: all of them
    ]);
    expect(out).toEqual([
      "choice 1 pick 0: 2 5 4",
      "offered 1",
      "choice 1 pick 0: 1 2 4 5",
      "offered 1",
      "choice 1 pick 0: 1 2 4 5",
      "offered 1",
      "pick 1 0", // (the tool's closing list of picks: no choice was set)
    ]);
  });

  it("a gemv pick tries every variant within 15 % of its lone time; a fusion decision fewer", async () => {
    const out = await run([
      `near 4 0.15 -1 ${times}`, // 4 at 0.0196: up to 0.02254 (0 and 8 are slower)
      `near 4 0.15 0.03 ${times}`, // the unfused pair; fused variants up to 0.020188 (3, 5; not 7)
      `near -1 0.15 0.03 ${times}`, // unfused: only the fastest fused variant (4), not 3 / 5 / 7
      "near -1 0.15 0.03 -1:0.0100 4:0.0196", // the other side past 15 %: nothing
      `near 6 0.15 -1 ${times}`, // a pick never timed: nothing
    ]);
    expect(out).toEqual(["near -1 3 5 7", "near -1 3 5", "near 4", "near", "near"]);
  });

  it("offers only the keys looked up while recording; a decided key never again, a trial one keeps its place", async () => {
    const out = await run([
      ...["timed 1 -1 1.00", "timed 1 2 0.99", "timed 1 3 1.10", "timed 2 5 0.5", "timed 2 6 0.51"],
      ...["timed 3 0 1.0", "timed 3 1 1.0", "pick 1 -1", "pick 2 5", "pick 3 0"],
      "note 3", // not recording: not a key of this step
      ...["record 1", "note 1", "note 2", "note 1", "record 0", "note 3"],
      "offer 0.15 0.03",
      ...["set 1 2 done", "set 2 6 trial"],
      "offer 0.15 0.03",
      ...["record 1", "note 3", "record 0"], // a new capture's keys replace the last one's
      "offer 0.15 -1",
    ]);
    expect(out).toEqual([
      "choice 1 pick -1: 2", // fused variant 2 beats the pair; 3, the slower fused one, is not tried
      "choice 2 pick 5: 6", // no unfused time: its own side within 3 %
      "offered 2",
      "choice 2 pick 6: 5", // a trial set moved the pick; key 1 was decided
      "offered 1",
      "choice 3 pick 0: 1",
      "offered 1",
      "pick 1 2",
      "pick 2 6",
      "pick 3 0",
    ]);
  });
});
