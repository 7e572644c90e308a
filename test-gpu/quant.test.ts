// Quantised engines on the GPU (quant_linear: FP8 W8A8, int8 / int4 weight-only; FP8 KV cache) against
//   1. the CPU reference executor running the SAME engine (src/ops/quant-linear.ts defines the numerics the
//      kernels implement) at the engine's precision (its default: every op output rounded to fp16 as the GPU stores
//      it): prefill + teacher-forced decode logits, max |Δlogit| ≤ 0.05 (fp32 sums in another order, fused kernels,
//      are all that differ). FP8 W8A8 engines are bounded by their own measured sensitivity instead (see below);
//   2. the Hugging Face goldens within the bound the CPU path meets for that engine (src/golden.ts
//      defaultTolerance: int8-wo 0.1, fp8 0.5, int4-wo 1.25, + 0.2 for an FP8 KV cache; test/quant measured them);
//   3. the three prompts packed in one step vs one at a time (≤ 0.05: decode M = 1 runs the quantised gemv,
//      packed prefill the FP8 cuBLASLt GEMM / the dequantised GEMM, another summation order).
// Every case also runs with TSLLM_QGEMV=0 (the large-M path for decode too), so both paths meet bound 1.
// FP8 context FMHA (attention_context_fp8.cu: the prompts' attention with Q and P in E4M3 on the tensor cores): FP8
// engines (fp8 + kv fp8) run it by default, forced on (TSLLM_FP8_CONTEXT_FMHA=1, strict kernels: no fallback) and
// off (=0, the fp16 context kernel), each within bound 1; the attention nodes' fp8Fmha counters show which kernel
// ran. Engines with fp16 weights and an FP8 KV cache keep the fp16 kernel by default; forced on, they only print
// their distance to the reference (its rounding of Q, the step's own K/V and P is not the reference's: a CPU
// emulation moved the tiny engines' logits by 0.160 / 0.050, over bound 1's 0.05; native/README.md). Forced on with
// strict kernels, an engine without an FP8 KV cache fails its first prompt naming the reason.
// tiny-llama's intermediate size 352 is not a multiple of 128, so int4 group 128 runs on tiny-gptj (and group 32
// on both): the compiler refuses a group size that does not divide K.
import { afterAll, describe, expect, it } from "vitest";
import type { CompileOptions } from "../src/compile.ts";
import { openEngine } from "../src/engine/reader.ts";
import { ReferenceExecutor } from "../src/executor/reference.ts";
import { checkGolden, defaultTolerance, readGolden } from "../src/golden.ts";
import { CudaEngine } from "../src/native/binding.ts";
import { CudaExecutor } from "../src/native/executor.ts";
import { fixture, goldenFile, maxAbsDiff, packedVsOneByOne, teacherForced, tinyEngine } from "./helpers.ts";

const open: CudaEngine[] = [];
afterAll(() => {
  for (const e of open) e.close();
});

/** Loads with `env` set (the runtime reads its switches at load), then restores the environment. */
function load(dir: string, env: Record<string, string> = {}, cudaGraphs = true): CudaExecutor {
  const before = Object.fromEntries(Object.keys(env).map((k) => [k, process.env[k]]));
  Object.assign(process.env, env);
  try {
    const e = CudaEngine.load(dir, { cudaGraphs });
    open.push(e);
    return new CudaExecutor(e);
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

type Case = { which: "llama" | "gptj"; extra: Partial<CompileOptions> };
const cases: Case[] = [];
for (const which of ["llama", "gptj"] as const) {
  cases.push({ which, extra: { quant: "fp8" } });
  cases.push({ which, extra: { quant: "int8-wo" } });
  cases.push({ which, extra: { quant: "int4-wo", groupSize: 32 } });
  if (which === "gptj") cases.push({ which, extra: { quant: "int4-wo", groupSize: 128 } });
  cases.push({ which, extra: { kvCacheDtype: "fp8" } });
  cases.push({ which, extra: { quant: "fp8", kvCacheDtype: "fp8" } });
}

// FP8 W8A8 quantises every activation row to E4M3 (3 mantissa bits) at run time, so one fp16 ulp of difference in
// an activation (another summation order, a fused kernel) can move it to the neighbouring E4M3 code, a 6-12% change
// of that element: two correct executors of an fp8 engine differ far more than of an fp16 or int8-wo one. The CPU
// measures that on the same engine: its logits with activations stored at the engine's precision (fp16, the
// default, what the GPU computes) vs kept in fp32. Measured on the CPU (tiny-llama / tiny-gptj): fp8 0.1949 /
// 0.1279, fp8 + kv fp8 0.2678 / 0.1513; fp16 0.0029 / 0.0018, int8-wo 0.0029 / 0.0019 (test/quant/sensitivity.test.ts).
// Nudging 2% of the fp16 activations by one ulp gives the same order (tiny-llama fp8 0.1831, fp16 0.0054).
// The GPU measured 0.1458 / 0.0692 (fp8), 0.2007 / 0.0685 (+ kv fp8) vs the fp16 reference; every other engine met 0.05.
function refBound(c: Case, sensitivity: number): number {
  return c.extra.quant === "fp8" ? Math.max(0.05, 1.25 * sensitivity) : 0.05;
}

const name = (c: Case) =>
  `tiny-${c.which} ${c.extra.quant ?? "none"}${c.extra.groupSize ? ` g${c.extra.groupSize}` : ""}${c.extra.kvCacheDtype ? ` kv ${c.extra.kvCacheDtype}` : ""}`;

describe("quantised engines on the GPU", () => {
  for (const c of cases) {
    it(`${name(c)}: GPU = CPU reference on the same engine (≤ 0.05; fp8: its sensitivity), goldens, packed = one by one`, async () => {
      // FP8 (weights or KV cache) needs an sm 89+ build; the suite's GPU is an H100/H200 (sm 90).
      const dir = await tinyEngine(c.which, "fp16", { sm: 90, ...c.extra });
      const golden = readGolden(goldenFile(c.which));
      const ref = teacherForced(ReferenceExecutor.load(dir), golden, 100);
      const ref32 = teacherForced(ReferenceExecutor.load(dir, { roundActivations: false }), golden, 100);
      const sensitivity = Math.max(...ref32.map((r, i) => maxAbsDiff(r, ref[i])));
      const bound1 = refBound(c, sensitivity);
      console.log(
        `${name(c)}: CPU fp16-stored vs fp32-stored activations ${sensitivity.toFixed(4)} → bound ${bound1.toFixed(4)}`,
      );
      // TSLLM_QGEMV_VARIANT: one forced variant for every decode call; with TSLLM_QGEMV_PROLOGUE=1 (off by default,
      // options.h says why) it also forces the rms_norm prologue into it (quant_gemv_has_prologue): fp8 4 (16-warp
      // blocks, division-free quantisation), int8 / int4 2 (4 rows per warp; their prologue variants are 0-2).
      const forced = c.extra.quant === "fp8" ? "4" : "2";
      // Each kind also with its tensor-core kernels forced (int8 / int4 variants 3, 7 (weights as the mma's A), 13
      // (7 with the scales after the mma, where the shape has whole groups of >= 128: else the tuner's) and 19 (the
      // weight-only GEMM, every call up to 256 rows with K a multiple of 128 int4 / 64 int8 weights); fp8
      // variant 8, with the rms_norm prologue folded in): which variant the tuner picks varies with timing, and a
      // kernel it picks only sometimes is tested only sometimes (session 7: that kernel was wrong under PDL and the
      // suite failed or passed from run to run).
      const mma =
        c.extra.quant === "int8-wo" || c.extra.quant === "int4-wo"
          ? ["3", "7", "13", "19"].map((v) => ({ TSLLM_QGEMV_VARIANT: v }))
          : c.extra.quant === "fp8"
            ? [{ TSLLM_QGEMV_VARIANT: "8", TSLLM_QGEMV_PROLOGUE: "1" }]
            : [];
      // TSLLM_QGLU=1 (the gated_act in the FP8 / int8 / int4 gate_up gemv's epilogue, on by default where its tuner
      // picks it): with variant 7 (int8 / int4) or 1 (FP8) forced, every decode gate_up of Llama runs quant_gemv_glu
      // and its gated_act launches nothing.
      const gluVariants: Record<string, string> = { "int8-wo": "7", "int4-wo": "7", fp8: "1" };
      const gluVariant = gluVariants[c.extra.quant ?? ""];
      const glu = gluVariant && c.which === "llama" ? [{ TSLLM_QGLU: "1", TSLLM_QGEMV_VARIANT: gluVariant }] : [];
      const kvFp8 = c.extra.kvCacheDtype === "fp8";
      const fp8Engine = kvFp8 && c.extra.quant === "fp8";
      const fmhaOn = { TSLLM_FP8_CONTEXT_FMHA: "1", TSLLM_STRICT_KERNELS: "1" };
      const fmhaRuns: Record<string, string>[] = fp8Engine ? [{ TSLLM_FP8_CONTEXT_FMHA: "0" }, fmhaOn] : [];
      // Which context attention ran: every attention node through the FP8 context FMHA (the suite's GPU is sm 90,
      // the fixtures' head dim 32), or none of them.
      const fmhaCounts = (env: Record<string, string>, want: boolean) => {
        const attn = open[open.length - 1]
          .nodeStats()
          .filter((n) => n.op === "attention" || n.op === "fused_attention");
        expect(attn.length).toBeGreaterThan(0);
        expect(
          attn.map((n) => n.fp8Fmha > 0),
          JSON.stringify(env),
        ).toEqual(attn.map(() => want));
      };
      for (const env of [
        {},
        { TSLLM_QGEMV: "0" },
        { TSLLM_QGEMV_VARIANT: forced, TSLLM_QGEMV_PROLOGUE: "1" },
        ...mma,
        ...glu,
        ...fmhaRuns,
      ] as Record<string, string>[]) {
        for (const graphs of [true, false]) {
          const gpu = teacherForced(load(dir, env, graphs), golden, 200);
          const fmha = env.TSLLM_FP8_CONTEXT_FMHA === "1"; // auto is off for now (forward.cc: slower)
          fmhaCounts(env, fmha);
          if (env.TSLLM_QGEMV_PROLOGUE && c.which === "llama" && c.extra.quant) {
            // Llama's rms_norm before qkv / gate_up folds into the quantised gemv: no launch of its own at decode.
            const st = open[open.length - 1].nodeStats();
            const folded = st.filter((n) => n.op === "rms_norm" && n.foldedInto >= 0);
            expect(folded.length).toBeGreaterThan(0);
            expect(folded.every((n) => n.folded > 0 && st[n.foldedInto].gemvRms > 0)).toBe(true);
          }
          if (env.TSLLM_QGLU) {
            const st = open[open.length - 1].nodeStats();
            const folded = st.filter((n) => n.op === "gated_act");
            expect(folded.length).toBeGreaterThan(0);
            expect(
              folded.every((n) => n.foldedInto >= 0 && n.folded > 0 && st[n.foldedInto].gemvGated > 0),
            ).toBe(true);
          }
          const max = Math.max(...gpu.map((g, i) => maxAbsDiff(g, ref[i])));
          const max32 = Math.max(...gpu.map((g, i) => maxAbsDiff(g, ref32[i])));
          console.log(
            `${name(c)} ${JSON.stringify(env)} graphs ${graphs}${kvFp8 ? ` fp8 context fmha ${fmha ? "on" : "off"}` : ""}: GPU vs CPU reference max |Δlogit| ${max.toFixed(4)} (fp16 activations, bound ${bound1.toFixed(4)}), ${max32.toFixed(4)} (fp32 activations)`,
          );
          expect(max).toBeLessThanOrEqual(bound1);
        }
      }
      if (kvFp8 && !fp8Engine) {
        const gpu = teacherForced(load(dir, fmhaOn), golden, 200);
        fmhaCounts(fmhaOn, true);
        const max = Math.max(...gpu.map((g, i) => maxAbsDiff(g, ref[i])));
        console.log(
          `${name(c)} fp8 context fmha forced on: GPU vs CPU reference max |Δlogit| ${max.toFixed(4)} (not bounded)`,
        );
      }
      if (!kvFp8 && c.extra.quant === "int8-wo")
        expect(() => teacherForced(load(dir, fmhaOn), golden, 200)).toThrow(
          /FP8 context FMHA forced \(fp8_context_fmha = 1, strict_kernels\) but it does not run: the KV cache is not FP8/,
        );

      const build = openEngine(dir).config.build;
      const bound = defaultTolerance(build, false);
      const ex = load(dir);
      const one = checkGolden(ex, golden);
      const packed = checkGolden(ex, golden, { batched: true, seqBase: 3000 });
      console.log(
        `${name(c)} vs goldens (bound ${bound}): one-by-one ${one.maxAbs.toFixed(4)}, packed ${packed.maxAbs.toFixed(4)}`,
      );
      expect(one.maxAbs).toBeLessThanOrEqual(bound);
      expect(packed.maxAbs).toBeLessThanOrEqual(bound);

      const max = packedVsOneByOne(ex, golden, 400);
      console.log(`${name(c)} packed vs one at a time: ${max.toFixed(4)}`);
      expect(max).toBeLessThanOrEqual(0.05);
    });
  }

  // Random-weight engines (the benchmarks' Llama-2-7B int8 / int4 engines) carry no weight bytes: the runtime draws
  // the integer values on the GPU (random_fill i8 / u8: rounded half to even and clamped, as the CPU reference's
  // roundStored) and the constant scales (src/quant/weights.ts randomInits). Same engine, same logits.
  for (const extra of [{ quant: "int8-wo" }, { quant: "int4-wo", groupSize: 32 }, { quant: "fp8" }]) {
    it(`random-weight tiny-llama ${extra.quant}: loads and GPU = CPU reference (≤ 0.05; fp8: its sensitivity)`, async () => {
      const config = `${fixture("llama")}/config.json`;
      const dir = await tinyEngine("llama", "fp16", {
        sm: 90,
        checkpoint: undefined,
        config,
        randomWeights: true,
        ...extra,
      });
      const golden = readGolden(goldenFile("llama"));
      const ref = teacherForced(ReferenceExecutor.load(dir), golden, 100);
      const ref32 = teacherForced(ReferenceExecutor.load(dir, { roundActivations: false }), golden, 100);
      const sensitivity = Math.max(...ref32.map((r, i) => maxAbsDiff(r, ref[i])));
      const bound = extra.quant === "fp8" ? Math.max(0.05, 1.25 * sensitivity) : 0.05;
      const gpu = teacherForced(load(dir), golden, 200);
      const max = Math.max(...gpu.map((g, i) => maxAbsDiff(g, ref[i])));
      const spread = Math.max(...ref.map((r) => Math.max(...r) - Math.min(...r)));
      console.log(
        `random-weight tiny-llama ${extra.quant}: GPU vs CPU reference max |Δlogit| ${max.toFixed(4)} (bound ${bound.toFixed(4)}; logit spread ${spread.toFixed(3)})`,
      );
      expect(spread).toBeGreaterThan(0.1); // the logits depend on the weights (not all-zero integer weights)
      expect(max).toBeLessThanOrEqual(bound);
    });
  }

  // FP8 activation fusion (native/src/runtime/forward.cc plan_fp8_act_fusion): an rms_norm / gated_act right before
  // an FP8 linear writes E4M3 rows and scales for that linear's GEMM instead of its output, in steps the GEMM takes
  // (more than 4 rows: here each whole sequence in one step). The GEMM reads the bytes it would have made itself,
  // so the logits equal those with the fusion off (TSLLM_FP8_ACT_FUSION=0), exactly; the nodes' fp8Act counters say
  // it ran. Tuning off in both loads: the tuner's timed picks (cuBLASLt algorithm, outer-vector scaling or the
  // epilogue kernel) may differ from one load to the next and move the last bits.
  for (const kv of [false, true]) {
    it(`tiny-llama fp8${kv ? " kv fp8" : ""}: norms / gated_act writing the FP8 GEMM's rows = the GEMM quantising (identical logits)`, async () => {
      const dir = await tinyEngine("llama", "fp16", {
        sm: 90,
        quant: "fp8",
        ...(kv ? { kvCacheDtype: "fp8" } : {}),
      });
      const golden = readGolden(goldenFile("llama"));
      const run = (env: Record<string, string>) => {
        const ex = load(dir, { TSLLM_GEMM_TUNE: "0", ...env });
        const logits = golden.prompts.map((p, i) => {
          const rows = ex.step([{ seqId: 500 + i, tokens: p.inputIds, logits: "all" }]).get(500 + i)!;
          ex.release(500 + i);
          return rows;
        });
        const producers = open[open.length - 1]
          .nodeStats()
          .filter((n) => n.op === "rms_norm" || n.op === "add_rms_norm" || n.op === "gated_act");
        return { logits: logits.flat(), producers };
      };
      const on = run({});
      const off = run({ TSLLM_FP8_ACT_FUSION: "0" });
      // Every gated_act and every norm but the final one (before the unquantised lm_head) feeds an FP8 linear.
      const norms = on.producers.filter((n) => n.op !== "gated_act");
      expect(on.producers.filter((n) => n.op === "gated_act").every((n) => n.fp8Act > 0)).toBe(true);
      expect(norms.filter((n) => n.fp8Act > 0).length).toBe(norms.length - 1);
      expect(off.producers.every((n) => n.fp8Act === 0)).toBe(true);
      const max = Math.max(...on.logits.map((r, i) => maxAbsDiff(r, off.logits[i])));
      console.log(
        `tiny-llama fp8${kv ? " kv fp8" : ""}: FP8 activation fusion on vs off max |Δlogit| ${max} over ${on.logits.length} rows (${on.producers.filter((n) => n.fp8Act > 0).length} producer nodes fused)`,
      );
      expect(max).toBe(0);
    });
  }

  // The same fusion at small-batch decode (the golden prompts stepping together: 3 rows a step): the norms and
  // gated_act write FP8 rows for the gemv over FP8 rows (fp8_gemv_rows, from 2 rows on) instead of the gemv
  // quantising x itself. With variant 8 forced both gemvs sum the same E4M3 products in the same order, so the
  // logits are identical; the gated_act nodes' fp8Act counters say it ran.
  it("tiny-llama fp8 decode at 3 rows: the gemv over its producers' FP8 rows = the gemv quantising x itself (identical logits)", async () => {
    const dir = await tinyEngine("llama", "fp16", { sm: 90, quant: "fp8" });
    const golden = readGolden(goldenFile("llama"));
    const gp = golden.prompts;
    const run = (env: Record<string, string>) => {
      const ex = load(dir, { TSLLM_GEMM_TUNE: "0", TSLLM_QGEMV_VARIANT: "8", ...env });
      gp.forEach((p, i) =>
        ex.step([{ seqId: 700 + i, tokens: p.inputIds.slice(0, p.promptLen), logits: "last" }]),
      );
      const rows: Float32Array[] = [];
      const n = Math.min(...gp.map((p) => p.inputIds.length - p.promptLen));
      for (let k = 0; k < n; k++) {
        const out = ex.step(
          gp.map((p, i) => ({
            seqId: 700 + i,
            tokens: [p.inputIds[p.promptLen + k]],
            logits: "last" as const,
          })),
        );
        gp.forEach((_, i) => rows.push(out.get(700 + i)![0]));
      }
      gp.forEach((_, i) => ex.release(700 + i));
      const gated = open[open.length - 1].nodeStats().filter((n) => n.op === "gated_act");
      return { rows, gated };
    };
    const on = run({});
    const off = run({ TSLLM_FP8_ACT_FUSION: "0" });
    expect(gp.length).toBeGreaterThanOrEqual(2);
    expect(on.gated.length).toBeGreaterThan(0);
    expect(on.gated.every((n) => n.fp8Act > 0)).toBe(true);
    expect(off.gated.every((n) => n.fp8Act === 0)).toBe(true);
    const max = Math.max(...on.rows.map((r, i) => maxAbsDiff(r, off.rows[i])));
    console.log(
      `tiny-llama fp8 decode at ${gp.length} rows: gemv over FP8 rows vs quantising itself max |Δlogit| ${max} over ${on.rows.length} rows`,
    );
    expect(on.rows.length).toBeGreaterThan(0);
    expect(max).toBe(0);
  });

  it("an FP8 engine on a GPU below sm 89 is refused naming both; other GPUs load it", async () => {
    const dir = await tinyEngine("llama", "fp16", { sm: 90, quant: "fp8" });
    const probe = CudaEngine.load(await tinyEngine("llama", "fp16"));
    const gpuSm = probe.info().gpuSm;
    probe.close();
    if (gpuSm >= 89) {
      load(dir); // loads (the engine's sm 90 <= the GPU's)
      return;
    }
    expect(() => load(dir)).toThrow(/sm 89/);
  });
});
