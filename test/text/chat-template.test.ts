// Chat templates and chat messages (src/text/chat-template.ts, src/text/chat-messages.ts) in-process:
// which template a folder's sources give, how they render, and each refusal as one line naming the file,
// the template or the message at fault.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { ChatMessagesSchema, parseChatMessages, toTemplateMessages } from "../../src/text/chat-messages.ts";
import { ChatTemplate, pickChatTemplate } from "../../src/text/chat-template.ts";
import { TokenizerError } from "../../src/text/errors.ts";
import { TINY_LLAMA } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

const TEMPLATE = fs.readFileSync(path.join(TINY_LLAMA, "chat_template.jinja"), "utf8");
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));

const message = (f: () => unknown): string => thrown(f, TokenizerError).message;

const src = (jinja: string | null, cfg: unknown, json: unknown) =>
  pickChatTemplate({
    jinja: jinja === null ? null : { file: "/m/chat_template.jinja", text: jinja },
    tokenizerConfig: { file: "/m/tokenizer_config.json", value: cfg },
    chatTemplateJson: { file: "/m/chat_template.json", value: json },
  });
const names = (m: Map<string, ChatTemplate>) =>
  [...m].map(([k, t]) => [k, t.source, t.render({ messages: [] })]);

describe("ChatTemplate", () => {
  it("renders the fixture's template as transformers did (tokenizer-golden.json)", () => {
    const t = new ChatTemplate("x", TEMPLATE);
    for (const c of golden.chat)
      expect(
        t.render({ messages: c.messages, add_generation_prompt: true, bos_token: "<|begin_of_text|>" }),
      ).toBe(c.text);
  });

  it("refuses a template that does not parse or fails to render, naming its source, first line only", () => {
    expect(message(() => new ChatTemplate("/m/chat_template.jinja", "{% if %}"))).toBe(
      "/m/chat_template.jinja: chat template does not parse: Unexpected token: CloseStatement",
    );
    const t = new ChatTemplate("/m/t.jinja", "{{ raise_exception('no system\nmessages') }}");
    expect(message(() => t.render({}))).toBe("chat template (/m/t.jinja): no system");
    expect(message(() => new ChatTemplate("s", "{{ foo() }}").render({}))).toBe(
      "chat template (s): Cannot call something that is not a function: got UndefinedValue",
    );
  });
});

describe("pickChatTemplate", () => {
  it("chat_template.jinja first, then tokenizer_config.json, then chat_template.json; none is an empty map", () => {
    expect(names(src("J", "T", "C"))).toEqual([["default", "/m/chat_template.jinja", "J"]]);
    expect(names(src("J", 5, 5))).toEqual([["default", "/m/chat_template.jinja", "J"]]);
    expect(names(src(null, "T", "C"))).toEqual([["default", "/m/tokenizer_config.json chat_template", "T"]]);
    for (const none of [undefined, null])
      expect(names(src(null, none, "C"))).toEqual([["default", "/m/chat_template.json chat_template", "C"]]);
    expect(names(src(null, undefined, undefined))).toEqual([]);
    expect(names(src(null, null, null))).toEqual([]);
    // an empty string is a template
    expect(names(src(null, "", "C"))).toEqual([["default", "/m/tokenizer_config.json chat_template", ""]]);
    expect(names(src("", "T", "C"))).toEqual([["default", "/m/chat_template.jinja", ""]]);
  });

  it("a list of named templates, in order; an empty list is no template and stops the search", () => {
    const list = [
      { name: "default", template: "D" },
      { name: "tool_use", template: "U", extra: 1 },
    ];
    expect(names(src(null, list, "C"))).toEqual([
      ["default", '/m/tokenizer_config.json chat_template "default"', "D"],
      ["tool_use", '/m/tokenizer_config.json chat_template "tool_use"', "U"],
    ]);
    expect(names(src(null, undefined, [{ name: "x", template: "X" }]))).toEqual([
      ["x", '/m/chat_template.json chat_template "x"', "X"],
    ]);
    expect(names(src(null, [], "C"))).toEqual([]);
  });

  it("refuses other kinds and malformed list entries, naming the file and the entry", () => {
    for (const v of [5, true, {}, { template: "x" }])
      expect(message(() => src(null, v, undefined))).toBe(
        "/m/tokenizer_config.json: chat_template must be a string or a list of {name, template}",
      );
    expect(message(() => src(null, undefined, 0))).toBe(
      "/m/chat_template.json: chat_template must be a string or a list of {name, template}",
    );
    for (const [list, i] of [
      [[null], 0],
      [[{ name: "a", template: "A" }, { name: "b" }], 1],
      [[{ template: "A" }], 0],
      [[{ name: 1, template: "A" }], 0],
      [[{ name: "a", template: ["A"] }], 0],
      [["A"], 0],
    ] as const)
      expect(message(() => src(null, undefined, list))).toBe(
        `/m/chat_template.json: chat_template[${i}] must be {"name": string, "template": string}`,
      );
    expect(message(() => src(null, [{ name: "a", template: "{% for %}" }], undefined))).toBe(
      '/m/tokenizer_config.json chat_template "a": chat template does not parse: Unexpected token: CloseStatement',
    );
  });
});

describe("parseChatMessages", () => {
  it("accepts string, null, missing and text-part contents, joining parts, keeping other fields", () => {
    expect(
      parseChatMessages(
        JSON.stringify([
          { role: "system", content: "be brief" },
          { role: "user", content: null },
          { role: "assistant" },
          {
            role: "user",
            content: [
              { type: "text", text: "a" },
              { type: "text", text: "" },
              { type: "text", text: "b c" },
            ],
            name: "n",
          },
          { role: "tool", content: "", tool_call_id: 7 },
        ]),
        "m.json",
      ),
    ).toStrictEqual([
      { role: "system", content: "be brief" },
      { role: "user", content: "" },
      { role: "assistant", content: "" },
      { role: "user", content: "a\n\nb c", name: "n" },
      { role: "tool", content: "", tool_call_id: 7 },
    ]);
  });

  it("refuses what is not a list of messages, in one line naming the source and the place", () => {
    const head = 'm.json: expected a list of {"role", "content"} messages';
    for (const [json, want] of [
      ["x", "m.json: invalid JSON: Unexpected token 'x', \"x\" is not valid JSON"],
      ["", "m.json: invalid JSON: Unexpected end of JSON input"],
      ["{}", `${head}: Invalid input: expected array, received object`],
      ["[]", `${head}: give at least one message`],
      ['[{"role":""}]', `${head} (at 0.role): Too small: expected string to have >=1 characters`],
      ['[{"content":"a"}]', `${head} (at 0.role): Invalid input: expected string, received undefined`],
      [
        '[{"role":"user"},{"role":"user","content":[]}]',
        `${head} (at 1.content): Too small: expected array to have >=1 items`,
      ],
      [
        '[{"role":"user","content":[{"type":"image_url","text":"a"}]}]',
        `${head} (at 0.content): Invalid input`,
      ],
      ['[{"role":"user","content":3}]', `${head} (at 0.content): Invalid input`],
      ["[3]", `${head} (at 0): Invalid input: expected object, received number`],
    ] as const)
      expect(message(() => parseChatMessages(json, "m.json"))).toBe(want);
  });

  it("toTemplateMessages on a parsed request", () => {
    const ms = ChatMessagesSchema.parse([
      { role: "u", content: [{ type: "text", text: "x" }] },
      { role: "a", content: null },
    ]);
    expect(toTemplateMessages(ms)).toStrictEqual([
      { role: "u", content: "x" },
      { role: "a", content: "" },
    ]);
  });
});
