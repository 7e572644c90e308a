// Progress of long work (building, loading, generating) on stderr: a cli-progress bar on a terminal;
// without one (piped, CI logs) a plain line every few seconds, so a log shows the work is alive and
// how fast it goes. Byte counts show GB/s and the ETA.
import cliProgress from "cli-progress";
import { cleanUpOnSignal } from "../fs-atomic.ts";
import { fmtBytes } from "../report/bytes.ts";

export interface Progress {
  update(done: number, label?: string): void;
  /** Final line: what was done, in how long, how fast. */
  stop(): void;
}

export interface ProgressOptions {
  /** "bytes" shows sizes and GB/s; "count" shows n/total and units per second. */
  unit: "bytes" | { name: string };
  stream?: NodeJS.WriteStream;
  /** Seconds between plain lines when not on a terminal (default 2; TSLLM_PROGRESS_INTERVAL overrides). */
  intervalS?: number;
}

// A terminal bar hides the cursor and redraws from a timer until stopped. One left drawn by a command that failed
// kept the process alive for ever after its error line (`tsllm-run ENGINE --verbose` on a corrupt rank file hung on a
// terminal), and one cut off by Ctrl-C left the terminal without a cursor. So the bars drawn now are known here:
// main() takes them down before its error line, and while any is drawn SIGINT / SIGTERM / SIGHUP take them down
// before the signal ends the process as it would have.
const drawn = new Set<cliProgress.SingleBar>();
let unlisten: (() => void) | null = null;

function undraw(bar: cliProgress.SingleBar): void {
  drawn.delete(bar);
  bar.stop();
  if (drawn.size === 0) {
    unlisten?.();
    unlisten = null;
  }
}

/** Takes down every terminal bar still drawn (cursor shown, redraw timer gone), with no final line. */
export function endProgressBars(): void {
  for (const bar of [...drawn]) undraw(bar);
}

const fmtS = (s: number) => (s >= 100 ? `${Math.round(s)} s` : `${s.toFixed(1)} s`);

export function progress(title: string, total: number, o: ProgressOptions): Progress {
  const stream = o.stream ?? process.stderr;
  const bytes = o.unit === "bytes";
  const unitName = o.unit === "bytes" ? "B" : o.unit.name;
  const amount = (n: number) => (bytes ? fmtBytes(n) : `${n}`);
  const rate = (n: number, s: number) =>
    bytes
      ? `${(n / 1e9 / Math.max(s, 1e-9)).toFixed(2)} GB/s`
      : `${(n / Math.max(s, 1e-9)).toFixed(1)} ${unitName}/s`;
  const t0 = performance.now();
  const secs = () => (performance.now() - t0) / 1000;
  let last = 0;
  let lastLabel = "";
  const intervalS = Number(process.env.TSLLM_PROGRESS_INTERVAL ?? o.intervalS ?? 2);

  if (stream.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${title} [{bar}] {percentage}% | {amount}/{size} | {rate} | ETA {eta_formatted} | {label}`,
        hideCursor: true,
        clearOnComplete: true,
        stream,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
    unlisten ??= cleanUpOnSignal(() => {
      unlisten = null;
      endProgressBars();
    });
    drawn.add(bar);
    bar.start(total, 0, { amount: amount(0), size: amount(total), rate: rate(0, 1), label: "" });
    return {
      update(done, label) {
        last = done;
        lastLabel = label ?? lastLabel;
        const l = lastLabel.length > 40 ? `…${lastLabel.slice(-39)}` : lastLabel;
        bar.update(done, { amount: amount(done), rate: rate(done, secs()), label: l });
      },
      stop() {
        undraw(bar);
        stream.write(`${title}: ${amount(last)} in ${fmtS(secs())}, ${rate(last, secs())}\n`);
      },
    };
  }
  let nextAt = intervalS;
  return {
    update(done, label) {
      last = done;
      lastLabel = label ?? lastLabel;
      const s = secs();
      if (s < nextAt || done >= total) return;
      nextAt = s + intervalS;
      const eta = done > 0 ? ((total - done) * s) / done : Number.NaN;
      stream.write(
        `${title}: ${amount(done)}/${amount(total)} (${Math.floor((100 * done) / Math.max(total, 1))}%), ${rate(done, s)}, ` +
          `ETA ${Number.isFinite(eta) ? fmtS(eta) : "?"}${lastLabel ? `, ${lastLabel}` : ""}\n`,
      );
    },
    stop() {
      stream.write(`${title}: ${amount(last)} in ${fmtS(secs())}, ${rate(last, secs())}\n`);
    },
  };
}
