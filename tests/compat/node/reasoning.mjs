// Drives a reasoning model with the official openai npm client and prints what it observed as
// one JSON object on stdout; tests/compat/test_reasoning_compat.py asserts on it. The SDK's
// types do not know reasoning_content / reasoning: they arrive as plain properties.
// Usage: APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... \
//        APPLIANCE_MODEL=o4-mini node reasoning.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
                            apiKey: process.env.APPLIANCE_KEY, maxRetries: 0 });
const model = process.env.APPLIANCE_MODEL;
const ask = [{ role: "user", content: "Tell me about the sea in a few sentences." }];
const city = { type: "object", additionalProperties: false, required: ["city"],
               properties: { city: { type: "string", maxLength: 30 } } };
const asked = { model, messages: ask, max_tokens: 96, temperature: 0,
                reasoning_effort: "low" };
const out = {};

function seen(completion) {
  const message = completion.choices[0].message;
  return { content: message.content, reasoning_content: message.reasoning_content ?? null,
           reasoning: message.reasoning ?? null, finish: completion.choices[0].finish_reason,
           usage: completion.usage };
}

out.plain = seen(await client.chat.completions.create(asked));

const order = [];
let reasoning = "";
let content = "";
let usage = null;
const stream = await client.chat.completions.create({ ...asked, stream: true,
  stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const choice of chunk.choices) {
    const delta = choice.delta;
    if (delta.reasoning_content) { reasoning += delta.reasoning_content; order.push("reasoning"); }
    if (delta.content) { content += delta.content; order.push("content"); }
  }
}
out.stream = { reasoning, content, order, usage };

out.none = seen(await client.chat.completions.create({ ...asked, max_tokens: 32,
                                                       reasoning_effort: "none" }));
out.low = out.plain;
out.structured = seen(await client.chat.completions.create({
  ...asked, reasoning_effort: "low",
  messages: [{ role: "user", content: "Which city is the capital of France? Answer in JSON." }],
  response_format: { type: "json_schema", json_schema: { name: "city", strict: true,
                                                         schema: city } } }));

process.stdout.write(JSON.stringify(out));
