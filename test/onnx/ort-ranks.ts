// Runs an `--emit onnx` directory in ONNX Runtime (CPU). With tp > 1 the rank models meet at
// com.microsoft AllReduce / AllGather, which the CPU build does not run: each rank's model is split
// at its collectives into stage models (same nodes, same external weights), the ranks run stage by
// stage in lock step, and the collectives are done here (a sum, a concatenation).
import * as fs from "node:fs";
import * as path from "node:path";
import * as ort from "onnxruntime-node";
import { onnx, type ValueInfoProto, valueInfo } from "../../src/onnx/builder.ts";
import type { OnnxDirConfig } from "../../src/onnx/write.ts";

type Model = ReturnType<typeof onnx.ModelProto.decode>;
interface Collective {
  op: string;
  input: string;
  output: string;
  axis: number;
}

function splitAtCollectives(model: Model): { stages: Model[]; collectives: Collective[] } {
  const g = model.graph!;
  const nodes = g.node ?? [];
  const cuts = nodes.flatMap((n, i) => (n.domain === "com.microsoft" ? [i] : []));
  const collectives = cuts.map((i) => {
    const n = nodes[i];
    const axis = n.attribute?.find((a) => a.name === "axis")?.i;
    return { op: n.opType!, input: n.input![0], output: n.output![0], axis: Number(axis ?? 0) };
  });
  const inits = new Map((g.initializer ?? []).map((t) => [t.name!, t]));
  const types = new Map<string, ValueInfoProto>();
  for (const v of [...(g.input ?? []), ...(g.output ?? []), ...(g.valueInfo ?? [])]) types.set(v.name!, v);
  const graphOutputs = new Set((g.output ?? []).map((v) => v.name!));
  const bounds = [-1, ...cuts, nodes.length];
  const stages: Model[] = [];
  for (let s = 0; s + 1 < bounds.length; s++) {
    const part = nodes.slice(bounds[s] + 1, bounds[s + 1]);
    const produced = new Set(part.flatMap((n) => n.output ?? []));
    const later = new Set(nodes.slice(bounds[s + 1]).flatMap((n) => n.input ?? []));
    const ins = [...new Set(part.flatMap((n) => n.input ?? []))].filter(
      (x) => x && !produced.has(x) && !inits.has(x),
    );
    const outs = [...produced].filter((x) => later.has(x) || graphOutputs.has(x));
    const info = (x: string) => types.get(x) ?? valueInfo(x, 1);
    const used = new Set(part.flatMap((n) => n.input ?? []));
    stages.push(
      onnx.ModelProto.create({
        ...model,
        graph: {
          name: `${g.name}_stage${s}`,
          node: part,
          initializer: [...inits.values()].filter((t) => used.has(t.name!)),
          input: ins.map(info),
          output: outs.map(info),
          valueInfo: g.valueInfo,
        },
        opsetImport: model.opsetImport?.filter((o) => !o.domain),
      }),
    );
  }
  return { stages, collectives };
}

export class OrtRanks {
  private constructor(
    readonly config: OnnxDirConfig,
    private sessions: ort.InferenceSession[][],
    /** Per rank: the collectives between its stages (value names differ between ranks). */
    private collectives: Collective[][],
  ) {}

  static async load(dir: string): Promise<OrtRanks> {
    const config = JSON.parse(fs.readFileSync(path.join(dir, "onnx.json"), "utf8")) as OnnxDirConfig;
    const collectives: Collective[][] = [];
    const sessions = await Promise.all(
      config.ranks.map(async (r, rank) => {
        const file = path.join(dir, r.file);
        if (config.tp === 1) return [await ort.InferenceSession.create(file)];
        const split = splitAtCollectives(onnx.ModelProto.decode(fs.readFileSync(file)));
        collectives[rank] = split.collectives;
        return Promise.all(
          split.stages.map((m, s) => {
            const f = path.join(dir, `rank${rank}.stage${s}.onnx`); // beside the external data
            fs.writeFileSync(f, onnx.ModelProto.encode(m).finish());
            return ort.InferenceSession.create(f);
          }),
        );
      }),
    );
    return new OrtRanks(config, sessions, collectives);
  }

  get tp(): number {
    return this.sessions.length;
  }

  /** One step of every rank (each with its own feeds: its past K/V); returns every rank's outputs. */
  async run(feeds: Record<string, ort.Tensor>[]): Promise<Record<string, ort.Tensor>[]> {
    const envs = feeds.map((f) => new Map(Object.entries(f)));
    const nStages = this.sessions[0].length;
    for (let s = 0; s < nStages; s++) {
      await Promise.all(
        this.sessions.map(async (stages, r) => {
          const sess = stages[s];
          const out = await sess.run(Object.fromEntries(sess.inputNames.map((n) => [n, envs[r].get(n)!])));
          for (const [k, v] of Object.entries(out)) envs[r].set(k, v);
        }),
      );
      const cs = this.collectives.map((c) => c[s]);
      if (cs[0]) {
        const parts = envs.map((e, r) => e.get(cs[r].input)!);
        const y = cs[0].op === "AllReduce" ? sum(parts) : concat(parts, cs[0].axis);
        envs.forEach((e, r) => e.set(cs[r].output, y));
      }
    }
    return envs.map((e) => Object.fromEntries(this.config.outputs.map((n) => [n, e.get(n)!])));
  }
}

function sum(parts: ort.Tensor[]): ort.Tensor {
  const out = new Float32Array(parts[0].data as Float32Array);
  for (const p of parts.slice(1)) {
    const d = p.data as Float32Array;
    for (let i = 0; i < out.length; i++) out[i] += d[i];
  }
  return new ort.Tensor("float32", out, parts[0].dims);
}

function concat(parts: ort.Tensor[], axis: number): ort.Tensor {
  const dims = [...parts[0].dims];
  const ax = axis < 0 ? dims.length + axis : axis;
  const inner = dims.slice(ax + 1).reduce((a, b) => a * b, 1) * dims[ax];
  const outer = dims.slice(0, ax).reduce((a, b) => a * b, 1);
  const out = new Float32Array(outer * inner * parts.length);
  parts.forEach((p, j) => {
    const d = p.data as Float32Array;
    for (let o = 0; o < outer; o++)
      out.set(d.subarray(o * inner, (o + 1) * inner), (o * parts.length + j) * inner);
  });
  dims[ax] *= parts.length;
  return new ort.Tensor("float32", out, dims);
}
