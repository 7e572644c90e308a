// Byte counts as tsllm prints them everywhere (the fusion report, the CLI's sizes and progress): binary units,
// three significant digits (0-2 decimals). A file of its own so that figures.ts can use it without importing the
// report text module, which imports the report types.
export function fmtBytes(n: number): string {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let x = n;
  while (Math.abs(x) >= 1024 && i < u.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i ? x.toFixed(x >= 100 ? 0 : x >= 10 ? 1 : 2) : x} ${u[i]}`;
}
