// applyChatTemplate's continueFinalMessage, as transformers' apply_chat_template(continue_final_message=True): the
// chat rendered without a generation prompt, cut after the last message's text (at its last occurrence), its
// trailing whitespace kept only where the template kept it; refused with add_generation_prompt, or where the
// template does not render the message.
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, expect, it } from "vitest";
import { TextTokenizer, TokenizerError } from "../../src/text/tokenizer.ts";
import { TINY_LLAMA, tmpDir } from "../fixtures.ts";
import { thrown } from "../thrown.ts";

const tok = TextTokenizer.load(TINY_LLAMA);
const golden = JSON.parse(fs.readFileSync(path.join(TINY_LLAMA, "tokenizer-golden.json"), "utf8"));
const CONTINUE = { addGenerationPrompt: false, continueFinalMessage: true };

/** A folder with the fixture's tokenizer.json and `template` as its chat template. */
function withTemplate(template: string): TextTokenizer {
  const dir = tmpDir("tsllm-continue-");
  fs.copyFileSync(path.join(TINY_LLAMA, "tokenizer.json"), path.join(dir, "tokenizer.json"));
  fs.writeFileSync(path.join(dir, "chat_template.jinja"), template);
  return TextTokenizer.load(dir);
}

describe("applyChatTemplate continueFinalMessage", () => {
  it("ends the text after the last message's text: golden chat up to the assistant's '5'", () => {
    const c = golden.chat[1];
    const want = c.text.slice(0, c.text.indexOf("5<|eot_id|>") + 1);
    const r = tok.applyChatTemplate(c.messages.slice(0, 3), CONTINUE);
    expect(r.text).toBe(want);
    expect(r.ids).toEqual(c.ids.slice(0, r.ids.length));
    expect(r.ids).toEqual(tok.encode(want, { addSpecialTokens: false }));
  });

  it("trailing whitespace: kept where the template kept it, not past a trimmed message", () => {
    const msgs = [{ role: "assistant", content: "The answer is " }];
    // The fixture's template trims: the cut is after "is".
    expect(tok.applyChatTemplate(msgs, CONTINUE).text.endsWith("\n\nThe answer is")).toBe(true);
    // A template that keeps the message as given: the space stays.
    const raw = withTemplate("{% for m in messages %}[{{ m.role }}]{{ m.content }}[end]{% endfor %}");
    expect(raw.applyChatTemplate(msgs, CONTINUE).text).toBe("[assistant]The answer is ");
    // The last occurrence: a text that also appears earlier is continued where the message is.
    const twice = [
      { role: "user", content: "ab" },
      { role: "assistant", content: "ab" },
    ];
    expect(raw.applyChatTemplate(twice, CONTINUE).text).toBe("[user]ab[end][assistant]ab");
  });

  it("refused with add_generation_prompt, and where the template leaves the message out", () => {
    const msgs = [{ role: "assistant", content: "hello" }];
    expect(
      thrown(() => tok.applyChatTemplate(msgs, { continueFinalMessage: true }), TokenizerError).message,
    ).toBe(
      "continue_final_message and add_generation_prompt cannot both be true: continuing the last message adds no " +
        "new turn",
    );
    const roles = withTemplate("{% for m in messages %}[{{ m.role }}]{% endfor %}");
    expect(thrown(() => roles.applyChatTemplate(msgs, CONTINUE), TokenizerError).message).toBe(
      "continue_final_message: the last message's text is not in the chat the template rendered, so there is no " +
        "place to continue it from",
    );
  });

  it("a message the chat starts with (found at index 0) is continued; no messages at all is refused", () => {
    // transformers: rendered_chat.rindex(final_message.strip()) is 0 here, a place like any other; the cut keeps the
    // trailing space where the template kept it (rendered[0:6] == "hello ") and drops a leading one it did not write.
    const bare = withTemplate("{% for m in messages %}{{ m.content }}{% endfor %}[end]");
    expect(bare.applyChatTemplate([{ role: "assistant", content: "hello" }], CONTINUE).text).toBe("hello");
    expect(bare.applyChatTemplate([{ role: "assistant", content: "hello " }], CONTINUE).text).toBe("hello ");
    const trims = withTemplate("{% for m in messages %}{{ m.content | trim }}{% endfor %}[end]");
    expect(trims.applyChatTemplate([{ role: "assistant", content: " hello " }], CONTINUE).text).toBe("hello");
    // transformers reads chat[-1]["content"], an IndexError on an empty chat: nothing to continue is refused (was the
    // whole rendered chat, "[end]").
    expect(thrown(() => bare.applyChatTemplate([], CONTINUE), TokenizerError).message).toBe(
      "continue_final_message: there are no messages, so no last one to continue",
    );
    expect(bare.applyChatTemplate([], { addGenerationPrompt: false }).text).toBe("[end]");
  });
});
