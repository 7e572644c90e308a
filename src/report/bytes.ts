// Byte counts as the fusion report prints them (one to three significant decimals). A file of its own so
// that figures.ts can use it without importing the report text module, which imports the report types.
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
