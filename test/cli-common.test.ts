// The shared CLI option parsers and plumbing (src/cli/common.ts), in-process: every bad value is refused
// with one line naming the flag, the value or the allowed range (hand-worked bounds, both sides of each),
// commander turns a refusal into exit code 1, and main() prints one "error:" line and sets exit code 1.
// (test/cli-messages.test.ts checks the same through the real bins, in child processes.)
import { EventEmitter } from "node:events";
import * as fs from "node:fs";
import * as path from "node:path";
import { type Command, CommanderError, InvalidArgumentError } from "commander";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  cancelWhenReaderGone,
  command,
  dropWritesWhenReaderGone,
  float,
  fp8ContextFmhaOption,
  int,
  kvFractionOption,
  limitOption,
  list,
  main,
  NUMPY_SEED,
  nonEmpty,
  parseIds,
  seedArg,
  VERSION,
} from "../src/cli/common.ts";
import { REPO } from "./fixtures.ts";
import { thrown } from "./thrown.ts";

const refused = (f: () => unknown) => thrown(f, InvalidArgumentError).message;

describe("int", () => {
  it("accepts integers, negative ones too when no range is given", () => {
    const p = int("--n");
    expect(p("0")).toBe(0);
    expect(p("42")).toBe(42);
    expect(p("-3")).toBe(-3);
    expect(p("007")).toBe(7);
  });

  it("refuses anything but an integer, naming the flag and the value", () => {
    for (const v of ["1.5", "abc", "", " 1", "1 ", "1e3", "0x10", "+1", "--1", "1-"])
      expect(refused(() => int("--n")(v))).toBe(`--n must be an integer, got "${v}"`);
  });

  it("refuses an integer past 2^53 - 1, which a number no longer holds exactly", () => {
    expect(int("--n")(String(2 ** 53 - 1))).toBe(2 ** 53 - 1);
    expect(int("--n")(String(-(2 ** 53 - 1)))).toBe(-(2 ** 53 - 1));
    for (const v of [String(2 ** 53), "99999999999999999999", "-9007199254740993"])
      expect(refused(() => int("--n")(v))).toBe(
        `--n must be an integer from -(2^53 - 1) to 2^53 - 1, got "${v}"`,
      );
  });

  it("checks each bound on both sides", () => {
    const min = int("--a", { min: 1 });
    expect(min("1")).toBe(1);
    expect(refused(() => min("0"))).toBe("Allowed: --a ≥ 1.");
    const above = int("--b", { above: 0 });
    expect(above("1")).toBe(1);
    expect(refused(() => above("0"))).toBe("Allowed: --b > 0.");
    const max = int("--c", { max: 4 });
    expect(max("4")).toBe(4);
    expect(max("-9")).toBe(-9);
    expect(refused(() => max("5"))).toBe("Allowed: --c ≤ 4.");
    const both = int("--d", { min: 1, max: 4 });
    expect([both("1"), both("4")]).toEqual([1, 4]);
    expect(refused(() => both("0"))).toBe("Allowed: --d in [1, 4].");
    expect(refused(() => both("5"))).toBe("Allowed: --d in [1, 4].");
    const open = int("--e", { above: 0, max: 4 });
    expect(open("4")).toBe(4);
    expect(refused(() => open("0"))).toBe("Allowed: --e in (0, 4].");
  });
});

describe("float", () => {
  it("accepts finite numbers in JavaScript's number syntax", () => {
    const p = float("--x");
    expect(p("0.5")).toBe(0.5);
    expect(p("1e-3")).toBe(0.001);
    expect(p("-2")).toBe(-2);
    expect(p("3")).toBe(3);
  });

  it("refuses empty, blank, non-numeric and non-finite values, naming the flag and the value", () => {
    for (const v of ["", "  ", "abc", "1.2.3", "Infinity", "-Infinity", "NaN", "1,5"])
      expect(refused(() => float("--x")(v))).toBe(`--x must be a number, got "${v}"`);
  });

  it("checks each bound on both sides, an open lower bound excluding the bound itself", () => {
    const p = float("--p", { above: 0, max: 1 });
    expect(p("1")).toBe(1);
    expect(p("1e-9")).toBe(1e-9);
    expect(refused(() => p("0"))).toBe("Allowed: --p in (0, 1].");
    expect(refused(() => p("1.0001"))).toBe("Allowed: --p in (0, 1].");
    const q = float("--t", { min: 0 });
    expect(q("0")).toBe(0);
    expect(refused(() => q("-0.5"))).toBe("Allowed: --t ≥ 0.");
    const r = float("--r", { min: 0.5, max: 2 });
    expect(r("0.5")).toBe(0.5);
    expect(refused(() => r("0.4"))).toBe("Allowed: --r in [0.5, 2].");
    expect(refused(() => r("2.5"))).toBe("Allowed: --r in [0.5, 2].");
  });
});

describe("nonEmpty, seedArg and NUMPY_SEED", () => {
  it("nonEmpty refuses an empty or blank value naming the flag, and returns any other value as given", () => {
    const p = nonEmpty("--api-key");
    for (const v of ["", " ", "\t", " \n "]) expect(refused(() => p(v))).toBe("--api-key is empty");
    expect(p("k")).toBe("k");
    // Not trimmed: a key or a path with spaces around it is the user's to give.
    expect(p(" k ")).toBe(" k ");
    expect(p("0")).toBe("0");
  });

  it("seedArg takes integers of magnitude up to 2^53 - 1 and refuses the rest as typed, as a commander refusal", () => {
    const p = seedArg("--seed");
    expect([p("0"), p("-9007199254740991"), p("9007199254740991")]).toEqual([0, -(2 ** 53 - 1), 2 ** 53 - 1]);
    // 2^53 reads as a number exactly, one past the range.
    expect(refused(() => p("9007199254740992"))).toBe(
      '--seed must be an integer from -(2^53 - 1) to 2^53 - 1, got "9007199254740992"',
    );
    expect(refused(() => p("1.5"))).toBe('--seed must be an integer, got "1.5"');
  });

  it("NUMPY_SEED: 0 to 2^32 - 1 (np.random.seed's range), both ends taken, one past each refused", () => {
    const p = int("--seed", NUMPY_SEED);
    expect([p("0"), p("4294967295")]).toEqual([0, 4294967295]);
    for (const v of ["-1", "4294967296"])
      expect(refused(() => p(v))).toBe("Allowed: --seed in [0, 4294967295].");
  });
});

describe("list and parseIds", () => {
  it("list splits on commas, drops empty entries and accumulates over repeats", () => {
    expect(list("a,b")).toEqual(["a", "b"]);
    expect(list("a,,b,")).toEqual(["a", "b"]);
    expect(list("c", ["a", "b"])).toEqual(["a", "b", "c"]);
    expect(list("")).toEqual([]);
  });

  it("parseIds reads non-negative integers and names the flag and the bad entry", () => {
    expect(parseIds("1,2,3", "--ids")).toEqual([1, 2, 3]);
    expect(parseIds("507", "--ids")).toEqual([507]);
    expect(parseIds(" 4, 5", "--ids")).toEqual([4, 5]);
    for (const [s, bad] of [
      ["1,x", "x"],
      ["1,,2", ""],
      ["", ""],
      ["-1", "-1"],
      ["1.5", "1.5"],
      ["2,3e2", "3e2"],
    ])
      expect(thrown(() => parseIds(s, "--ids"), Error).message).toBe(`--ids: "${bad}" is not a token id`);
  });
});

/** A command that throws instead of exiting, its output captured. */
function harness(cmd: Command) {
  const out: string[] = [];
  const err: string[] = [];
  cmd.exitOverride().configureOutput({ writeOut: (s) => out.push(s), writeErr: (s) => err.push(s) });
  const parse = (...args: string[]) => cmd.parse(args, { from: "user" });
  return { out, err, parse };
}

describe("command and the shared options", () => {
  it("--version / -V print package.json's version", () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8"));
    expect(VERSION).toBe(pkg.version);
    for (const flag of ["--version", "-V"]) {
      const h = harness(command("tsllm-x", "does x"));
      const e = thrown(() => h.parse(flag), CommanderError);
      expect(e.exitCode).toBe(0);
      expect(h.out.join("")).toBe(`${pkg.version}\n`);
    }
    const cmd = command("tsllm-x", "does x");
    expect(cmd.name()).toBe("tsllm-x");
    expect(cmd.description()).toBe("does x");
    expect(cmd.helpInformation()).toContain("print the tsllm version");
  });

  it("a usage error is one error line, then the --help hint naming the command; exit code 1", () => {
    const h = harness(command("tsllm-x", "does x"));
    const e = thrown(() => h.parse("--bogus"), CommanderError);
    expect(e.exitCode).toBe(1);
    expect(h.err).toEqual(["error: unknown option '--bogus'\n", "(tsllm-x --help lists the flags)\n"]);
  });

  it("limit options: refused below 1 by commander with the flag, the value and the range; exit code 1", () => {
    for (const [flag, what] of [
      ["--max-batch-size", "sequences in one step"],
      ["--max-num-tokens", "tokens in one step"],
      ["--max-seq-len", "tokens of one sequence"],
    ] as const) {
      const o = limitOption(flag);
      expect(o.flags).toBe(`${flag} <n>`);
      expect(o.description).toBe(`runtime limit on ${what} (default: the engine's)`);
      const ok = harness(command("tsllm-x", "d").addOption(limitOption(flag)));
      expect(ok.parse(flag, "1").opts()).toEqual({ [o.attributeName()]: 1 });
      const h = harness(command("tsllm-x", "d").addOption(limitOption(flag)));
      const e = thrown(() => h.parse(flag, "0"), CommanderError);
      expect(e.exitCode).toBe(1);
      expect(e.message).toBe(`error: option '${flag} <n>' argument '0' is invalid. Allowed: ${flag} ≥ 1.`);
      const h2 = harness(command("tsllm-x", "d").addOption(limitOption(flag)));
      expect(thrown(() => h2.parse(flag, "two"), CommanderError).message).toBe(
        `error: option '${flag} <n>' argument 'two' is invalid. ${flag} must be an integer, got "two"`,
      );
    }
  });

  it("--fp8-context-fmha: auto by default, on/off taken, anything else refused", () => {
    const make = () => harness(command("tsllm-x", "d").addOption(fp8ContextFmhaOption()));
    expect(make().parse().opts()).toEqual({ fp8ContextFmha: "auto" });
    expect(make().parse("--fp8-context-fmha", "on").opts()).toEqual({ fp8ContextFmha: "on" });
    expect(make().parse("--fp8-context-fmha", "off").opts()).toEqual({ fp8ContextFmha: "off" });
    const h = make();
    const e = thrown(() => h.parse("--fp8-context-fmha", "maybe"), CommanderError);
    expect(e.exitCode).toBe(1);
    expect(e.message).toBe(
      "error: option '--fp8-context-fmha <mode>' argument 'maybe' is invalid. Allowed choices are auto, on, off.",
    );
    // Its help says what each mode does and where the FP8 kernel runs at all.
    const help = fp8ContextFmhaOption().description;
    for (const said of [
      "prompt (context) attention over an FP8 KV cache",
      "auto = off for now",
      "on for every FP8 KV cache",
      "off never",
      "on sm 89+ GPUs for head dims that are multiples of 16 up to 128",
      "the fp16/bf16 kernel runs whatever the mode",
    ])
      expect(help).toContain(said);
  });

  it("--kv-cache-free-gpu-mem-fraction: in (0, 1], no default of its own", () => {
    const make = () => harness(command("tsllm-x", "d").addOption(kvFractionOption()));
    const flag = "--kv-cache-free-gpu-mem-fraction";
    expect(make().parse().opts()).toEqual({});
    expect(make().parse(flag, "1").opts()).toEqual({ kvCacheFreeGpuMemFraction: 1 });
    expect(make().parse(flag, "0.5").opts()).toEqual({ kvCacheFreeGpuMemFraction: 0.5 });
    for (const v of ["0", "1.5", "-0.1"]) {
      const h = make();
      expect(thrown(() => h.parse(flag, v), CommanderError).message).toBe(
        `error: option '${flag} <x>' argument '${v}' is invalid. Allowed: ${flag} in (0, 1].`,
      );
    }
    expect(kvFractionOption().description).toBe("share of free GPU memory for the KV cache (default 0.9)");
  });
});

describe("main", () => {
  const exitCode = process.exitCode;
  let listeners: ((...a: unknown[]) => void)[] = [];
  afterEach(() => {
    // main() adds a stdout 'error' listener per call: take back the ones the test added.
    for (const l of process.stdout.listeners("error"))
      if (!listeners.includes(l as never)) process.stdout.off("error", l as never);
    process.exitCode = exitCode;
    delete process.env.TSLLM_DEBUG;
    vi.restoreAllMocks();
  });
  const run = async (fn: () => Promise<void>) => {
    listeners = process.stdout.listeners("error") as never;
    const written: string[] = [];
    vi.spyOn(process.stderr, "write").mockImplementation((s: string | Uint8Array) => {
      written.push(String(s));
      return true;
    });
    process.exitCode = undefined;
    await main(fn);
    const code = process.exitCode;
    process.exitCode = exitCode;
    vi.mocked(process.stderr.write).mockRestore();
    return { written, code };
  };

  it("success: no output, exit code untouched", async () => {
    let ran = false;
    const r = await run(async () => {
      ran = true;
    });
    expect(ran).toBe(true);
    expect(r).toEqual({ written: [], code: undefined });
  });

  it("an error: its first line only, after 'error: ', and exit code 1", async () => {
    const r = await run(async () => {
      throw new Error("engine.json: bad\n  at some detail");
    });
    expect(r).toEqual({ written: ["error: engine.json: bad\n"], code: 1 });
    const s = await run(async () => {
      throw "a string";
    });
    expect(s).toEqual({ written: ["error: a string\n"], code: 1 });
  });

  it("TSLLM_DEBUG adds the stack after the line", async () => {
    process.env.TSLLM_DEBUG = "1";
    const e = new Error("boom");
    const r = await run(async () => {
      throw e;
    });
    expect(r.written).toEqual(["error: boom\n", `${e.stack}\n`]);
    expect(r.code).toBe(1);
  });

  it("main drops stdout and stderr when their reader goes away, and leaves the exit code alone", async () => {
    const errListeners = process.stderr.listeners("error");
    await run(async () => {});
    const added = process.stdout.listeners("error").filter((l) => !listeners.includes(l as never));
    expect(added).toHaveLength(1);
    const addedErr = process.stderr.listeners("error").filter((l) => !errListeners.includes(l as never));
    expect(addedErr).toHaveLength(1);
    for (const l of addedErr) process.stderr.off("error", l as never);
  });
});

describe("dropWritesWhenReaderGone", () => {
  /** A stream whose writes are recorded until the handler replaces write. */
  function fake() {
    const s = new EventEmitter() as EventEmitter & { write: (...a: unknown[]) => boolean; got: string[] };
    s.got = [];
    s.write = (c: unknown) => {
      s.got.push(String(c));
      return true;
    };
    dropWritesWhenReaderGone(s as unknown as NodeJS.WritableStream, "stdout");
    return s;
  }
  const err = (code: string) => Object.assign(new Error(`write ${code}`), { code });

  it("after EPIPE, writes are dropped (true returned, callbacks called) and nothing exits", async () => {
    const exit = vi.spyOn(process, "exit");
    const s = fake();
    s.write("before\n");
    s.emit("error", err("EPIPE"));
    expect(s.write("after\n")).toBe(true);
    let called = 0;
    s.write("with callback", () => called++);
    s.write("with encoding and callback", "utf8", () => called++);
    await new Promise((r) => process.nextTick(r));
    expect(called).toBe(2);
    expect(s.got).toEqual(["before\n"]);
    // A second error of the kind (writes queued before the first one) changes nothing.
    s.emit("error", err("ERR_STREAM_DESTROYED"));
    expect(s.write("later")).toBe(true);
    expect(s.got).toEqual(["before\n"]);
    expect(exit).not.toHaveBeenCalled();
    exit.mockRestore();
  });

  // It was thrown from the listener: `tsllm-inspect ENGINE > /dev/full` ended in a stack trace.
  it("any other stream error: one line naming the stream on stderr, exit code 1, writes dropped, nothing exits", () => {
    const exit = vi.spyOn(process, "exit");
    const realWrite = process.stderr.write;
    const log = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    try {
      const s = fake();
      s.write("before\n");
      s.emit("error", err("ENOSPC"));
      expect(process.exitCode).toBe(1);
      expect(log.mock.calls).toEqual([["error: stdout: write ENOSPC\n"]]);
      expect(s.write("after\n")).toBe(true);
      // Once: the writes queued before it fail too.
      s.emit("error", err("EIO"));
      s.emit("error", err("ERR_STREAM_DESTROYED"));
      expect(log.mock.calls).toHaveLength(1);
      expect(s.got).toEqual(["before\n"]);
      expect(exit).not.toHaveBeenCalled();
      // stderr's own failure is not written to it.
      dropWritesWhenReaderGone(process.stderr, "stderr");
      const mine = process.stderr.listeners("error").at(-1) as (e: Error) => void;
      process.exitCode = undefined;
      mine(err("ENOSPC"));
      expect(process.exitCode).toBe(1);
      process.stderr.off("error", mine);
      expect(log.mock.calls).toHaveLength(1);
    } finally {
      log.mockRestore();
      // (The listener dropped stderr's writes: put its own write back.)
      process.stderr.write = realWrite;
      exit.mockRestore();
      process.exitCode = undefined;
    }
  });
});

describe("cancelWhenReaderGone", () => {
  const err = (code: string) => Object.assign(new Error(`write ${code}`), { code });

  // Any error: stdout cannot take what is generated after it. On ENOSPC (a full disk) generation went on to its end.
  it("shuts the batch manager down on any error of stdout (EPIPE, a destroyed stream, ENOSPC), until removed", () => {
    const s = new EventEmitter();
    const shutdown = vi.fn(async () => {});
    const remove = cancelWhenReaderGone({ shutdown }, s as unknown as NodeJS.WritableStream);
    s.emit("error", err("ENOSPC"));
    expect(shutdown).toHaveBeenCalledTimes(1);
    s.emit("error", err("EPIPE"));
    expect(shutdown).toHaveBeenCalledTimes(2);
    s.emit("error", err("ERR_STREAM_DESTROYED"));
    expect(shutdown).toHaveBeenCalledTimes(3);
    remove();
    expect(s.listenerCount("error")).toBe(0);
  });
});
