// src/cli/progress.ts: the plain lines written off a terminal (every few seconds, with n/total, percentage, rate,
// ETA and label, never at or past the end), the final line, and the cli-progress bar on a terminal; the clock is
// performance.now stepped by hand, the stream a recording stand-in, so every line is worked out exactly.
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { main } from "../src/cli/common.ts";
import { progress } from "../src/cli/progress.ts";

let now = 0;
beforeEach(() => {
  now = 1000;
  vi.spyOn(performance, "now").mockImplementation(() => now);
  // cli-progress redraws at most every 100 ms by Date.now.
  vi.spyOn(Date, "now").mockImplementation(() => now);
  vi.stubEnv("TSLLM_PROGRESS_INTERVAL", undefined as unknown as string);
  delete process.env.TSLLM_PROGRESS_INTERVAL;
});
afterEach(() => {
  vi.restoreAllMocks();
  vi.unstubAllEnvs();
});

/** A stream that records what is written; a terminal when `tty`. */
function stream(tty = false) {
  const s = {
    text: "",
    isTTY: tty,
    columns: 400,
    rows: 40,
    write(x: string) {
      s.text += x;
      return true;
    },
    cursorTo(_x: number, _y?: number, cb?: () => void) {
      cb?.();
      return true;
    },
    moveCursor(_dx: number, _dy: number, cb?: () => void) {
      cb?.();
      return true;
    },
    clearLine(_d: number, cb?: () => void) {
      cb?.();
      return true;
    },
    clearScreenDown(cb?: () => void) {
      cb?.();
      return true;
    },
    on() {
      return s;
    },
    removeListener() {
      return s;
    },
  };
  return s;
}
const at = (s: number) => {
  now = 1000 + s * 1000;
};

describe("progress off a terminal", () => {
  it("counts: a line once the interval has passed, then every interval; none at the end; the final line", () => {
    const out = stream();
    const p = progress("generate", 200, { unit: { name: "tok" }, stream: out as never });
    at(1.5);
    p.update(10);
    expect(out.text).toBe(""); // before the first 2 s
    at(2);
    p.update(20, "layer 3");
    // 20 of 200 in 2 s: 10.0 tok/s, ETA 180 · 2 / 20 = 18 s
    expect(out.text).toBe("generate: 20/200 (10%), 10.0 tok/s, ETA 18.0 s, layer 3\n");
    at(3.9);
    p.update(30);
    expect(out.text.split("\n")).toHaveLength(2); // next at 4 s
    at(4.5);
    p.update(45); // the label stays
    expect(out.text.split("\n")[1]).toBe("generate: 45/200 (22%), 10.0 tok/s, ETA 15.5 s, layer 3");
    at(20);
    p.update(200, "done"); // at the end: no line
    expect(out.text.split("\n")).toHaveLength(3);
    at(250);
    p.stop();
    // 200 in 250 s: ≥ 100 s shown whole
    expect(out.text.split("\n")[2]).toBe("generate: 200 in 250 s, 0.8 tok/s");
    expect(out.text.endsWith("\n")).toBe(true);
  });

  it("bytes: sizes, GB/s, the interval from the options and from TSLLM_PROGRESS_INTERVAL; no ETA at 0 done", () => {
    const out = stream();
    const p = progress("weights", 3 * 2 ** 30, { unit: "bytes", stream: out as never, intervalS: 0.5 });
    at(0.5);
    p.update(0, "a.bin");
    expect(out.text).toBe("weights: 0 B/3.00 GiB (0%), 0.00 GB/s, ETA ?, a.bin\n");
    at(0.75);
    p.update(2 ** 30);
    expect(out.text.split("\n")).toHaveLength(2);
    at(1);
    p.update(2 ** 30);
    // 1073741824 B in 1 s = 1.07 GB/s; ETA 2 s
    expect(out.text.split("\n")[1]).toBe("weights: 1.00 GiB/3.00 GiB (33%), 1.07 GB/s, ETA 2.0 s, a.bin");
    at(4);
    p.stop();
    expect(out.text.split("\n")[2]).toBe("weights: 1.00 GiB in 4.0 s, 0.27 GB/s");

    vi.stubEnv("TSLLM_PROGRESS_INTERVAL", "10");
    now = 0;
    const q = stream();
    const r = progress("load", 100, { unit: "bytes", stream: q as never, intervalS: 0.5 });
    now = 9000;
    r.update(50);
    expect(q.text).toBe("");
    now = 10_000;
    r.update(50);
    expect(q.text).toBe("load: 50 B/100 B (50%), 0.00 GB/s, ETA 10.0 s\n");
  });

  it("defaults: every 2 s on stderr; a total of 0 is not divided by; the rate of 0 s is not divided by", () => {
    const err = vi.spyOn(process.stderr, "write").mockImplementation(() => true);
    const p = progress("x", 0, { unit: { name: "u" } });
    now = 1000;
    p.stop();
    expect(err.mock.calls.map((c) => c[0])).toEqual(["x: 0 in 0.0 s, 0.0 u/s\n"]);
    const q = progress("y", 10, { unit: { name: "u" } });
    at(1.99);
    q.update(1);
    at(2);
    q.update(1);
    q.update(9, "");
    expect(err.mock.calls.map((c) => c[0]).slice(1)).toEqual(["y: 1/10 (10%), 0.5 u/s, ETA 18.0 s\n"]);
    at(4);
    q.update(9, "z");
    q.update(10);
    expect(err.mock.calls.map((c) => c[0]).slice(2)).toEqual(["y: 9/10 (90%), 2.3 u/s, ETA 0.4 s, z\n"]);
    // A total of 0: the percentage of 0 done is 0 %, not NaN; past the end nothing more is said.
    const z = stream();
    now = 0;
    const zero = progress("z", 0, { unit: { name: "u" }, stream: z as never, intervalS: 1 });
    now = 1000;
    zero.update(0);
    expect(z.text).toBe("");
    const neg = progress("n", 5, { unit: { name: "u" }, stream: z as never, intervalS: 1 });
    now = 1000;
    const r = progress("r", 3, { unit: { name: "u" }, stream: z as never, intervalS: 1 });
    now = 2000;
    neg.update(4);
    r.update(2);
    expect(z.text).toBe("n: 4/5 (80%), 4.0 u/s, ETA 0.3 s\nr: 2/3 (66%), 2.0 u/s, ETA 0.5 s\n");
    now = 2000;
    const fast = progress("f", 8, { unit: { name: "u" }, stream: z as never, intervalS: 0 });
    fast.update(4);
    fast.stop();
    // 0 s: the rate is over 1e-9 s, the ETA 0.
    expect(z.text.split("\n").slice(2, 4)).toEqual([
      "f: 4/8 (50%), 4000000000.0 u/s, ETA 0.0 s",
      "f: 4 in 0.0 s, 4000000000.0 u/s",
    ]);
  });
});

describe("progress on a terminal", () => {
  it("the bar: title, percentage, sizes, rate and the label's last 39 characters; the final line after it", () => {
    const out = stream(true);
    const p = progress("load", 2048, { unit: "bytes", stream: out as never });
    expect(out.text).toContain("load [");
    expect(out.text).toContain("] 0% | 0 B/2.00 KiB | 0.00 GB/s | ETA ");
    at(1);
    const long = `${"a".repeat(10)}/${"b".repeat(40)}`;
    p.update(1024, long);
    expect(out.text).toContain(`] 50% | 1.00 KiB/2.00 KiB | 0.00 GB/s | ETA `);
    expect(out.text).toContain(`| …${"b".repeat(39)}`);
    expect(out.text).not.toContain(`/${"b".repeat(40)}`);
    at(2);
    p.update(1536);
    expect(out.text).toContain(`] 75% | 1.50 KiB/2.00 KiB | 0.00 GB/s | ETA `);
    expect(out.text).toContain(`| …${"b".repeat(39)}`);
    const before = out.text.length;
    p.stop();
    expect(out.text.slice(before).endsWith("load: 1.50 KiB in 2.0 s, 0.00 GB/s\n")).toBe(true);

    now = 1000;
    const c = stream(true);
    const q = progress("gen", 100, { unit: { name: "tok" }, stream: c as never });
    at(4);
    q.update(40, "short label");
    expect(c.text).toContain("gen [");
    expect(c.text).toContain("] 40% | 40/100 | 10.0 tok/s | ETA ");
    expect(c.text).toContain("| short label");
    expect(c.text).not.toContain("…");
    at(5);
    q.update(50);
    expect(c.text).toContain("] 50% | 50/100 | 10.0 tok/s | ETA ");
    q.stop();
    expect(c.text.endsWith("gen: 50 in 5.0 s, 10.0 tok/s\n")).toBe(true);
  });

  it("hides the cursor, starts with no label, clears the bar when done; a label of 40 characters is kept whole", () => {
    const out = stream(true);
    const p = progress("t", 10, { unit: { name: "u" }, stream: out as never });
    expect(out.text.startsWith("\u001b7\u001b[?25l")).toBe(true); // save, hide the cursor
    expect(out.text).toContain("] 0% | 0/10 | 0.0 u/s | ETA ");
    expect(out.text.endsWith(" | \u001b[0K")).toBe(true); // no label yet
    at(1);
    const forty = "c".repeat(40);
    p.update(5, forty);
    expect(out.text).toContain(`| ${forty}\u001b[0K`);
    const before = out.text.length;
    at(100);
    p.stop();
    // The cursor shown again and restored, the bar's line cleared (no newline left after it), then the final line:
    // 100 s is shown whole.
    expect(out.text.slice(before)).toBe(
      "\u001b[?25h\u001b[?7h\u001b8\u001b[1G\u001b[2Kt: 5 in 100 s, 0.1 u/s\n",
    );
  });
});

// A bar left drawn kept its redraw timer (the process never ended after a failed command's error line) and the hidden
// cursor (a terminal without one after Ctrl-C).
describe("a terminal's bar left drawn", () => {
  const SHOW = "\u001b[?25h";

  it("main() takes it down before its error line, with no final line", async () => {
    const out = stream(true);
    vi.spyOn(process.stderr, "write").mockImplementation((x) => {
      out.text += String(x);
      return true;
    });
    try {
      await main(async () => {
        progress("load", 10, { unit: "bytes", stream: out as never }).update(4);
        throw new Error("corrupt");
      });
      expect(process.exitCode).toBe(1);
    } finally {
      process.exitCode = undefined;
    }
    expect(out.text.slice(out.text.lastIndexOf(SHOW))).toMatch(/^[^\n]*error: corrupt\n$/);
    expect(out.text).not.toContain("load: "); // no final line: it did not finish
  });

  it("SIGINT, SIGTERM or SIGHUP take it down, then end the process by the same signal; none listened after stop", () => {
    const kill = vi.spyOn(process, "kill").mockImplementation(() => true);
    const before = ["SIGINT", "SIGTERM", "SIGHUP"].map((s) => process.listenerCount(s));
    for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
      const out = stream(true);
      progress("t", 10, { unit: { name: "u" }, stream: out as never });
      const mine = process.listeners(sig).at(-1) as (s: NodeJS.Signals) => void;
      mine(sig);
      expect(out.text.endsWith(`${SHOW}\u001b[?7h\u001b8\u001b[1G\u001b[2K`)).toBe(true);
      expect(kill).toHaveBeenLastCalledWith(process.pid, sig);
      expect(["SIGINT", "SIGTERM", "SIGHUP"].map((s) => process.listenerCount(s))).toEqual(before);
    }
    const p = progress("t", 10, { unit: { name: "u" }, stream: stream(true) as never });
    expect(process.listenerCount("SIGINT")).toBe(before[0] + 1);
    p.stop();
    expect(["SIGINT", "SIGTERM", "SIGHUP"].map((s) => process.listenerCount(s))).toEqual(before);
  });
});
