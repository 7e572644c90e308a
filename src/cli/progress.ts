// Progress of long work (building, loading, generating) on stderr: a cli-progress bar on a terminal;
// without one (piped, CI logs) a plain line every few seconds, so a log shows the work is alive and
// how fast it goes. Byte counts show GB/s and the ETA.
import cliProgress from "cli-progress";
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
    bar.start(total, 0, { amount: amount(0), size: amount(total), rate: rate(0, 1), label: "" });
    return {
      update(done, label) {
        last = done;
        lastLabel = label ?? lastLabel;
        const l = lastLabel.length > 40 ? `…${lastLabel.slice(-39)}` : lastLabel;
        bar.update(done, { amount: amount(done), rate: rate(done, secs()), label: l });
      },
      stop() {
        bar.stop();
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
