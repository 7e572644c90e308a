// vLLM's text options on tsllm-serve, through the official openai client (extra body fields, as vLLM's docs pass
// them): add_generation_prompt and continue_final_message shape the chat prompt as transformers'
// apply_chat_template does (tokenizer-golden.json is its output), include_stop_str_in_output keeps the stop string,
// skip_special_tokens false keeps special tokens, and the eos token that ended a reply is never text unless asked
// for (vLLM's detokenizer skips the stop-terminating token). Each was refused as an unrecognized argument before.
import * as fs from "node:fs";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TextTokenizer } from "../../src/text/tokenizer.ts";
import { buildFixture, TINY_LLAMA } from "../fixtures.ts";
import { greedyOracle, startServer, type TestServer } from "./helpers.ts";

const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const tok = TextTokenizer.load(TINY_LLAMA);
const EOS = [508, 511];
const ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n";
type Extra = Record<string, unknown>;
type WithIds = { prompt_token_ids: number[]; choices: { token_ids: number[] }[] };

describe("vLLM's text options", () => {
  let engine: string;
  let s: TestServer;
  beforeAll(async () => {
    engine = await buildFixture("llama");
    s = await startServer(engine);
  });
  afterAll(async () => s?.close());

  /** The chat prompt's ids the server used (vLLM's return_token_ids). */
  async function chatPrompt(messages: Extra[], extra: Extra): Promise<number[]> {
    const r = await s.client.chat.completions.create({
      model: "tiny",
      messages: messages as never,
      max_tokens: 1,
      temperature: 0,
      ...({ return_token_ids: true, ...extra } as Extra),
    });
    return (r as unknown as WithIds).prompt_token_ids;
  }

  it("add_generation_prompt false: the chat without the assistant header (transformers' render)", async () => {
    const c = golden.chat[0];
    expect(c.text.endsWith(ASSISTANT_HEADER)).toBe(true);
    const want = tok.encode(c.text.slice(0, -ASSISTANT_HEADER.length), { addSpecialTokens: false });
    expect(c.ids.slice(0, want.length)).toEqual(want);
    expect(await chatPrompt(c.messages, { add_generation_prompt: false })).toEqual(want);
    expect(await chatPrompt(c.messages, { add_generation_prompt: true })).toEqual(c.ids);
  });

  it("continue_final_message: the prompt ends inside the last message (its trimmed trailing space too)", async () => {
    const c = golden.chat[1]; // system, user, assistant "5", user: the first three, the reply "5" to continue
    const upTo5 = c.text.slice(0, c.text.indexOf("5<|eot_id|>") + 1);
    const want = tok.encode(upTo5, { addSpecialTokens: false });
    expect(c.ids.slice(0, want.length)).toEqual(want);
    const messages = c.messages.slice(0, 3);
    const opts = { add_generation_prompt: false, continue_final_message: true };
    expect(await chatPrompt(messages, opts)).toEqual(want);
    // The template trims the message: transformers cuts after the text, not one character past it.
    const spaced = [...messages.slice(0, 2), { role: "assistant", content: "5 " }];
    expect(await chatPrompt(spaced, opts)).toEqual(want);
    // Both at once is refused, as transformers and vLLM refuse it.
    const both = s.client.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 1,
      ...({ continue_final_message: true } as Extra),
    });
    await expect(both).rejects.toMatchObject({ status: 400 });
  });

  it("include_stop_str_in_output: the text ends after the stop string, streamed or not", async () => {
    const prompt = golden.encode[1].text;
    const base = {
      model: "tiny",
      prompt,
      max_tokens: 24,
      temperature: 0,
      ...({ ignore_eos: true } as Extra),
    };
    const full = (await s.client.completions.create(base)).choices[0].text;
    const stop = full.slice(6, 11);
    const at = full.indexOf(stop);
    const keep = { stop, ...({ include_stop_str_in_output: true } as Extra) };
    const r = await s.client.completions.create({ ...base, ...keep });
    expect(r.choices[0].text).toBe(full.slice(0, at + stop.length));
    expect(r.choices[0].finish_reason).toBe("stop");
    let streamed = "";
    for await (const ch of await s.client.completions.create({ ...base, ...keep, stream: true }))
      streamed += ch.choices[0]?.text ?? "";
    expect(streamed).toBe(full.slice(0, at + stop.length));
    expect((await s.client.completions.create({ ...base, stop })).choices[0].text).toBe(full.slice(0, at));
  });

  it("skip_special_tokens false keeps special tokens in the text; the eos that ended it only when asked", async () => {
    // Prompts whose greedy reply holds a special token: [507, 12] one that does not end it, [507, 17] its eos.
    const mid = greedyOracle(engine, [507, 12], 4, []);
    expect(mid.some((id) => id >= 507)).toBe(true);
    const r = await s.client.completions.create({
      model: "tiny",
      prompt: [507, 12],
      max_tokens: 4,
      temperature: 0,
      ...({ ignore_eos: true, skip_special_tokens: false } as Extra),
    });
    expect(r.choices[0].text).toBe(tok.decode(mid, { skipSpecialTokens: false }));
    const ended = greedyOracle(engine, [507, 17], 8, EOS);
    expect(EOS).toContain(ended.at(-1));
    const req = { model: "tiny", prompt: [507, 17], max_tokens: 8, temperature: 0 };
    const kept = await s.client.completions.create({ ...req, ...({ skip_special_tokens: false } as Extra) });
    expect(kept.choices[0].finish_reason).toBe("stop");
    expect(kept.choices[0].text).toBe(tok.decode(ended.slice(0, -1), { skipSpecialTokens: false }));
    const withEos = await s.client.completions.create({
      ...req,
      ...({ skip_special_tokens: false, include_stop_str_in_output: true } as Extra),
    });
    expect(withEos.choices[0].text).toBe(tok.decode(ended, { skipSpecialTokens: false }));
  });
});
