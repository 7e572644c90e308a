// The fusion report: built from the graph before and after the passes, written into the engine
// directory as report.json and report.html, printed as a table.
import { renderHtml } from "./html.ts";
import type { FusionReport } from "./report.ts";

export { fmtBytes } from "./bytes.ts";
export { type GraphFigures, graphFigures } from "./figures.ts";
export { renderHtml } from "./html.ts";
export { buildReport, FusionReport, type PassRecord } from "./report.ts";
export { formatReport } from "./text.ts";

export const REPORT_JSON = "report.json";
export const REPORT_HTML = "report.html";

export function reportFiles(r: FusionReport): Record<string, string> {
  return { [REPORT_JSON]: `${JSON.stringify(r, null, 1)}\n`, [REPORT_HTML]: renderHtml(r) };
}
