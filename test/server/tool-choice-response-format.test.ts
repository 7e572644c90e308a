// tool_choice "none" (with or without tools) and response_format {"type": "text"} are OpenAI's neutral values (no
// tool is called; the reply is plain text): accepted, through the official openai client, the reply the one of
// the same request without them. What would need tool-call parsing or guided decoding is a 400 naming the field.
import * as fs from "node:fs";
import * as path from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { startServer, type TestServer } from "./helpers.ts";

const CHAT = {
  model: "tiny",
  messages: [{ role: "user" as const, content: "Hi" }],
  max_tokens: 4,
  temperature: 0,
};
const TOOLS = [
  {
    type: "function" as const,
    function: {
      name: "get_weather",
      description: "Weather at a place",
      parameters: { type: "object", properties: { place: { type: "string" } } },
    },
  },
];

/** tiny-llama's tokenizer with a chat template that writes each tool's name before the messages. */
function toolTemplateTokenizer(): TextTokenizer {
  const dir = tmpDir("tsllm-tok-");
  for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"])
    fs.copyFileSync(path.join(TINY_LLAMA, f), path.join(dir, f));
  fs.writeFileSync(
    path.join(dir, "chat_template.jinja"),
    "{% if tools %}{% for t in tools %}tool {{ t['function']['name'] }} {% endfor %}{% endif %}" +
      "{% for m in messages %}{{ m['content'] }}{% endfor %}",
  );
  return TextTokenizer.load(dir);
}

/** The 400 a request gets: its status, message and param (through the client's error). */
async function refusal(p: Promise<unknown>) {
  const e = await p.then(
    () => null,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(OpenAI.BadRequestError);
  const b = e as InstanceType<typeof OpenAI.BadRequestError>;
  return { status: b.status, message: (b.error as { message: string }).message, param: b.param };
}

describe("tsllm-serve: tool_choice none and response_format text are accepted (openai client)", () => {
  let s: TestServer;
  let t: TestServer;
  beforeAll(async () => {
    const engine = await buildFixture("llama");
    s = await startServer(engine);
    t = await startServer(engine, { tokenizer: toolTemplateTokenizer() });
  });
  afterAll(async () => {
    await s?.close();
    await t?.close();
  });

  it('tool_choice "none", with or without tools, and response_format text: the plain reply', async () => {
    const plain = await s.client.chat.completions.create(CHAT);
    for (const extra of [
      { tool_choice: "none" as const },
      { tool_choice: "none" as const, tools: TOOLS },
      { response_format: { type: "text" as const } },
      { tool_choice: "none" as const, response_format: { type: "text" as const } },
    ]) {
      const r = await s.client.chat.completions.create({ ...CHAT, ...extra });
      expect(r.choices[0].message.content, JSON.stringify(extra)).toBe(plain.choices[0].message.content);
      expect(r.choices[0].finish_reason).toBe(plain.choices[0].finish_reason);
      expect(r.choices[0].message.tool_calls ?? undefined).toBeUndefined();
    }
    // Completions take response_format too (vLLM's do).
    const c = await s.client.completions.create({
      model: "tiny",
      prompt: "Hi",
      max_tokens: 3,
      temperature: 0,
    });
    const ct = await s.client.completions.create({
      model: "tiny",
      prompt: "Hi",
      max_tokens: 3,
      temperature: 0,
      response_format: { type: "text" },
    } as never);
    expect(ct.choices[0].text).toBe(c.choices[0].text);
  });

  it('tools with tool_choice "none" reach the chat template, as vLLM renders them', async () => {
    const without = await t.client.chat.completions.create({ ...CHAT, max_tokens: 1 });
    const withTools = await t.client.chat.completions.create({
      ...CHAT,
      max_tokens: 1,
      tools: TOOLS,
      tool_choice: "none",
    });
    const rendered = toolTemplateTokenizer().applyChatTemplate(CHAT.messages, { extra: { tools: TOOLS } });
    expect(rendered.text).toBe("tool get_weather Hi");
    expect(withTools.usage!.prompt_tokens).toBe(rendered.ids.length);
    expect(withTools.usage!.prompt_tokens).toBeGreaterThan(without.usage!.prompt_tokens);
  });

  it("what cannot be honoured: a 400 naming the field", async () => {
    const cases: [Record<string, unknown>, string, string][] = [
      [{ tool_choice: "auto" }, 'tool_choice: tool_choice is not supported (only "none")', "tool_choice"],
      [
        { tool_choice: "required", tools: TOOLS },
        'tool_choice: tool_choice is not supported (only "none")',
        "tool_choice",
      ],
      [
        { tool_choice: { type: "function", function: { name: "get_weather" } }, tools: TOOLS },
        'tool_choice: tool_choice is not supported (only "none")',
        "tool_choice",
      ],
      [
        { tools: TOOLS },
        'tools: tools is not supported (only null, [], or any with tool_choice "none")',
        "tools",
      ],
      [
        { response_format: { type: "json_object" } },
        'response_format: response_format is not supported (only {"type": "text"})',
        "response_format",
      ],
      [
        { response_format: { type: "json_schema", json_schema: { name: "x", schema: {} } } },
        "Unrecognized request argument supplied: response_format.json_schema",
        "response_format.json_schema",
      ],
    ];
    for (const [extra, message, param] of cases) {
      const r = await refusal(s.client.chat.completions.create({ ...CHAT, ...extra } as never));
      expect(r, JSON.stringify(extra)).toEqual({ status: 400, message, param });
    }
    const r = await refusal(
      s.client.completions.create({
        model: "tiny",
        prompt: "Hi",
        max_tokens: 1,
        response_format: { type: "json_object" },
      } as never),
    );
    expect(r).toEqual({
      status: 400,
      message: 'response_format: response_format is not supported (only {"type": "text"})',
      param: "response_format",
    });
  });
});
