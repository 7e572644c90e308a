import { describe, expect, it } from "vitest";
import { printGraph } from "../../src/ir/printer.ts";
import { around, itKeepsLogits } from "./equivalence.ts";
import { layerNodes, opCounts } from "./helpers.ts";

describe("epilogue-fusion", () => {
  // llama: both residual adds per layer; gptj: fc_in's gelu and the parallel residual per layer
  itKeepsLogits("epilogue-fusion", { llama: 4, gptj: 4 });

  it("tiny-llama: both residual adds of each layer fold into o_proj and down_proj", async () => {
    const { after, log } = await around("epilogue-fusion", "llama");
    expect(log.matches.map((m) => m.pattern)).toEqual(["residual", "residual", "residual", "residual"]);
    expect(opCounts(after).add).toBeUndefined();
    const l1 = layerNodes(after, 1);
    const o = l1.find((n) => after.values.get(n.inputs[1]!)?.name.endsWith("o_proj.weight"))!;
    const down = l1.find((n) => after.values.get(n.inputs[1]!)?.name.endsWith("down_proj.weight"))!;
    // o_proj adds the residual stream coming into the layer; down_proj adds o_proj's output.
    const l0down = layerNodes(after, 0).find((n) =>
      after.values.get(n.inputs[1]!)?.name.endsWith("down_proj.weight"),
    )!;
    expect(o.inputs[3]).toBe(l0down.outputs[0]);
    expect(down.inputs[3]).toBe(o.outputs[0]);
    expect(l1.map((n) => n.op)).toEqual([
      "rms_norm",
      "linear",
      "fused_attention",
      "linear",
      "rms_norm",
      "linear",
      "gated_act",
      "linear",
    ]);
  });

  it("tiny-gptj: gelu into fc_in; attn_out + mlp_out + residual → out_proj(+residual) then fc_out(+that)", async () => {
    const { after, log } = await around("epilogue-fusion", "gptj");
    const counts: Record<string, number> = {};
    for (const m of log.matches) counts[m.pattern] = (counts[m.pattern] ?? 0) + 1;
    expect(counts).toEqual({ activation: 2, "parallel-residual": 2 });
    expect(opCounts(after).add).toBeUndefined();
    expect(opCounts(after).gelu).toBeUndefined();
    const text = printGraph(after);
    expect(text).toMatch(
      /= linear\(%\d+, @transformer\.h\.0\.mlp\.fc_in\.weight, @transformer\.h\.0\.mlp\.fc_in\.bias\) \{activation=gelu_tanh\}/,
    );
    const l0 = layerNodes(after, 0);
    const w = (n: (typeof l0)[number]) => after.values.get(n.inputs[1]!)?.name ?? "";
    const outProj = l0.find((n) => w(n).endsWith("out_proj.weight"))!;
    const fcOut = l0.find((n) => w(n).endsWith("fc_out.weight"))!;
    const embed = after.nodes.find((n) => n.op === "embedding")!;
    expect(outProj.inputs[3]).toBe(embed.outputs[0]); // the block's residual input
    expect(fcOut.inputs[3]).toBe(outProj.outputs[0]);
    expect(l0.map((n) => n.op)).toEqual([
      "layer_norm",
      "linear",
      "fused_attention",
      "linear",
      "linear",
      "linear",
    ]);
  });
});
