// report.html in a real browser: headless Chromium (Debian's package) driven by playwright-core.
// It must draw both graphs of one decoder layer (an SVG node per kernel) and show the figures, and it
// must not fetch anything. Skipped locally when Chromium is missing; under CI (process.env.CI) a
// missing Chromium fails the test, since .ci/run installs it.
import * as fs from "node:fs";
import * as path from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";
import { describe, expect, it } from "vitest";
import { compileEngine } from "../src/compile.ts";
import { FusionReport } from "../src/report/index.ts";
import { GPTJ_MODEL, LLAMA_MODEL, SHARED, tmpDir } from "./fixtures.ts";

const CHROMIUM = "/usr/bin/chromium";
const haveChromium = fs.existsSync(CHROMIUM);
const ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const skipped = !haveChromium && !process.env.CI;
// A skip must not look like a pass: say so on stderr, where vitest shows it even without --reporter=verbose.
if (skipped)
  process.stderr.write(
    `\n*** SKIPPED test/report-html.test.ts: ${CHROMIUM} is missing, so report.html is NOT checked in a browser ` +
      `(apt-get install -y chromium; under CI this fails instead) ***\n\n`,
  );

describe.skipIf(skipped)(
  `report.html in headless Chromium${skipped ? ` (SKIPPED: no ${CHROMIUM})` : ""}`,
  () => {
    it("Chromium is installed (CI installs Debian's chromium)", () => {
      expect(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install -y chromium`).toBe(true);
    });

    for (const [name, model, config] of [
      ["Llama 2 7B", LLAMA_MODEL, "llama-2-7b.json"],
      ["GPT-J 6B", GPTJ_MODEL, "gpt-j-6b.json"],
    ] as const)
      it(`${name}: draws layer 1 before and after fusion and shows the figures, offline`, async () => {
        const out = path.join(tmpDir(), "engine");
        await compileEngine({
          modelFile: model,
          config: path.join(SHARED, "configs", config),
          randomWeights: true,
          sm: 90,
          out,
        });
        const report = FusionReport.parse(JSON.parse(fs.readFileSync(path.join(out, "report.json"), "utf8")));
        const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
        try {
          const page = await browser.newPage({ viewport: { width: 1600, height: 1200 } });
          const requests: string[] = [];
          page.on("request", (r) => requests.push(r.url()));
          const errors: string[] = [];
          page.on("pageerror", (e) => errors.push(String(e)));
          const url = pathToFileURL(path.join(out, "report.html")).href;
          await page.goto(url, { waitUntil: "load" });

          for (const [id, d] of [
            ["#svg-before", report.drawing.before],
            ["#svg-after", report.drawing.after],
          ] as const) {
            const ops = page.locator(`${id} g.node.op`);
            expect(await ops.count()).toBe(d.nodes.filter((n) => n.kind === "op").length);
            expect(await ops.count()).toBe(d.launches);
            expect(await page.locator(`${id} path.edge`).count()).toBe(d.edges.length);
            // Really drawn: the SVG and its first node have a size on the page.
            const box = await page.locator(id).boundingBox();
            expect(box!.width).toBeGreaterThan(200);
            expect(box!.height).toBeGreaterThan(200);
            const nodeBox = await ops.first().boundingBox();
            expect(nodeBox!.width).toBeGreaterThan(20);
          }
          expect(report.drawing.after.launches).toBeLessThan(report.drawing.before.launches);
          expect(await page.locator("#svg-after g.node.fused").count()).toBeGreaterThan(0);
          expect(await page.locator("#svg-after g.node[data-op=fused_attention]").count()).toBe(1);

          const row = async (id: string) =>
            // biome-ignore lint/performance/useDomNodeTextContent: Playwright's rendered text (cells spaced)
            (await page.locator(`#${id}`).innerText()).replace(/\s+/g, " ");
          expect(await row("launches-layer")).toContain(
            `${report.before.launchesPerLayer} → ${report.after.launchesPerLayer}`,
          );
          expect(await row("launches-token")).toContain(
            `${report.before.launches} → ${report.after.launches}`,
          );
          expect(await row("saved")).toMatch(/\d+(\.\d+)? MiB per token/);
          expect(await row("arena")).toMatch(/Activation arena: [\d.]+ (MiB|GiB) laid out by liveness/);
          expect(await page.locator("#passes tr.pass").count()).toBe(report.passes.length);
          expect(await page.locator("#figures").isVisible()).toBe(true);
          expect(await page.locator("#before figcaption").textContent()).toContain(
            `${report.drawing.before.launches} kernel launches`,
          );

          // Hovering a node highlights its edges (the inline script ran).
          await page.locator("#svg-after g.node.op").nth(1).hover();
          expect(await page.locator("#svg-after path.edge.hl").count()).toBeGreaterThan(0);

          expect(errors).toEqual([]);
          expect(requests.filter((u) => !u.startsWith("file:"))).toEqual([]);
        } finally {
          await browser.close();
        }
      }, 60_000);
  },
);
