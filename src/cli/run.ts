// tsllm-run: generate with an engine, or verify it against a golden logits file.
import { Option } from "commander";
import { generate } from "../executor/generate.ts";
import { openExecutor } from "../executor/open.ts";
import { ReferenceExecutor } from "../executor/reference.ts";
import type { Executor } from "../executor/types.ts";
import { openEngine } from "../engine/reader.ts";
import { checkGolden, defaultTolerance, readGolden } from "../golden.ts";
import { command, float, int, main, parseIds } from "./common.ts";
import { checkPromptsFit } from "./validate.ts";

const program = command(
  "tsllm-run",
  "Run an engine. Either generate from prompts given as token ids, or check the engine against a " +
    "golden logits file (prefill + teacher-forced decode; see README 'Golden files').",
)
  .argument("<engine>", "engine directory written by tsllm-compile")
  .addOption(
    new Option("--device <d>", "cpu (reference executor, fp32 math) or cuda (native runtime)")
      .choices(["cpu", "cuda", "auto"])
      .default("auto"),
  )
  .option(
    "--input-ids <ids>",
    "prompt token ids, comma separated; repeat for a batch",
    (v: string, p: string[] = []) => [...p, v],
  )
  .option("--max-new-tokens <n>", "tokens to generate per prompt", int("--max-new-tokens", { min: 0 }), 16)
  .option("--temperature <t>", "sampling temperature (0 = greedy)", float("--temperature", { min: 0 }), 0)
  .option("--top-k <k>", "sample among the k most likely tokens (0 = all)", int("--top-k", { min: 0 }), 0)
  .option("--top-p <p>", "nucleus sampling mass (1 = all)", float("--top-p", { above: 0, max: 1 }), 1)
  .option("--seed <n>", "sampling seed", int("--seed"), 0)
  .option("--golden <file>", "golden.safetensors to verify against")
  .option(
    "--tolerance <x>",
    "max |Δlogit| allowed with --golden (default by engine: fp32 on cpu 1e-3, fp16/bf16 0.05, int8-wo 0.1, fp8 0.5, int4-wo 1.25)",
    float("--tolerance", { above: 0 }),
  )
  .option("--no-verify", "skip the engine content-hash check (large engines)");

await main(async () => {
  program.parse();
  const o = program.opts();
  const [dir] = program.args;
  // What can be checked without running is checked before the (possibly long) engine load.
  const config = openEngine(dir, { verify: false }).config;
  if (!o.golden && !o.inputIds?.length) throw new Error("give --input-ids 1,2,3 (repeatable) or --golden FILE");
  const prompts: number[][] = o.golden ? [] : o.inputIds.map((s: string) => parseIds(s, "--input-ids"));
  checkPromptsFit(prompts, o.maxNewTokens, config);
  const ex: Executor = await openExecutor(dir, { device: o.device, verify: o.verify });
  try {
    if (o.golden) {
      const report = checkGolden(ex, readGolden(o.golden));
      const tol = o.tolerance ?? defaultTolerance(config.build, ex instanceof ReferenceExecutor);
      report.perPrompt.forEach((p, i) =>
        process.stdout.write(
          `prompt ${i}: max |Δlogit| ${p.maxAbs.toExponential(3)} (prefill ${p.prefillMaxAbs.toExponential(3)}, decode ${p.decodeMaxAbs.toExponential(3)}), top-1 agreement ${p.top1Agree}/${p.positions}\n`,
        ),
      );
      process.stdout.write(`overall: max |Δlogit| ${report.maxAbs.toExponential(3)} (tolerance ${tol})\n`);
      if (!(report.maxAbs <= tol))
        throw new Error(`max |Δlogit| ${report.maxAbs.toExponential(3)} exceeds tolerance ${tol}`);
      return;
    }
    const outs = generate(ex, prompts, {
      maxNewTokens: o.maxNewTokens,
      temperature: o.temperature,
      topK: o.topK,
      topP: o.topP,
      seed: o.seed,
    });
    for (const out of outs) process.stdout.write(`${out.join(",")}\n`);
  } finally {
    ex.close();
  }
});
