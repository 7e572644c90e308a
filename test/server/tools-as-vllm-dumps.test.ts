// Tools reach the chat template as vLLM hands them on: each ChatCompletionToolsParam's model_dump(), where a function
// given without description or parameters has them as None (FunctionDefinition's defaults). A template that dumps the
// tools (Llama 3.1's `t | tojson(indent=4)`) then writes "description": null; passed as the client sent them, the
// keys were missing and the prompt differed from vLLM's.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { ChatBody } from "../../src/server/schemas.ts";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";

function dumpingTokenizer(): TextTokenizer {
  const dir = tmpDir("tsllm-tok-");
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
    fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  fs.writeFileSync(path.join(dir, "chat_template.jinja"), "{{ tools | tojson }}");
  return TextTokenizer.load(dir);
}

const body = (tools: unknown[]) =>
  ChatBody.parse({ model: "m", messages: [{ role: "user", content: "Hi" }], tool_choice: "none", tools });

describe("tools as the chat template sees them (vLLM's model_dump)", () => {
  it("a function without description or parameters has them as null; strict, when given, after them", () => {
    const b = body([{ type: "function", function: { name: "f", strict: true } }]);
    expect(b.tools).toEqual([
      { type: "function", function: { name: "f", description: null, parameters: null, strict: true } },
    ]);
    const text = dumpingTokenizer().applyChatTemplate(b.messages as never, {
      extra: { tools: b.tools },
    }).text;
    // What vLLM renders (transformers' tojson: json.dumps of the model_dump()).
    expect(text).toBe(
      '[{"type": "function", "function": {"name": "f", "description": null, "parameters": null, "strict": true}}]',
    );
  });

  it("given fields are kept as given", () => {
    const fn = { name: "g", description: "d", parameters: { type: "object" } };
    expect(body([{ type: "function", function: fn }]).tools).toEqual([{ type: "function", function: fn }]);
  });
});
