// Drives the appliance with the official openai npm client and prints what it observed as
// one JSON object on stdout; tests/compat/test_node_sdk.py asserts on it.
// Usage: APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... \
//        APPLIANCE_MODEL=smollm2-135m-instruct node compat.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
                            apiKey: process.env.APPLIANCE_KEY, maxRetries: 0 });
const model = process.env.APPLIANCE_MODEL;
const ask = [{ role: "user", content: "What is the weather in Paris?" }];
const weather = { type: "function", function: { name: "get_weather", strict: true,
  parameters: { type: "object", additionalProperties: false, required: ["city"],
                properties: { city: { type: "string", maxLength: 30 } } } } };
const out = {};

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

const plain = await client.chat.completions.create({ model, messages: ask, max_tokens: 8,
                                                     temperature: 0 });
out.plain = { content: plain.choices[0].message.content, finish: plain.choices[0].finish_reason,
              usage: plain.usage };

let streamed = "";
let usage = null;
const stream = await client.chat.completions.create({ model, messages: ask, max_tokens: 8,
  temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { content: streamed, usage };

const called = await client.chat.completions.create({ model, messages: ask, tools: [weather],
  tool_choice: "required", parallel_tool_calls: false, max_tokens: 100 });
out.tools = { finish: called.choices[0].finish_reason, content: called.choices[0].message.content,
              calls: called.choices[0].message.tool_calls };

const runner = client.chat.completions.stream({ model, messages: ask, tools: [weather],
  tool_choice: { type: "function", function: { name: "get_weather" } }, max_tokens: 100 });
const final = await runner.finalChatCompletion();
out.toolStream = { finish: final.choices[0].finish_reason,
                   calls: final.choices[0].message.tool_calls };

const structured = await client.chat.completions.create({ model, messages: ask, max_tokens: 100,
  response_format: { type: "json_schema", json_schema: { name: "city", strict: true,
    schema: weather.function.parameters } } });
out.structured = { finish: structured.choices[0].finish_reason,
                   content: structured.choices[0].message.content };

const embedding = await client.embeddings.create({ model: "text-embedding-3-small",
                                                   input: ["hello", "world"] });
out.embeddings = embedding.data.map((d) => ({ length: d.embedding.length,
  norm: Math.sqrt(d.embedding.reduce((s, x) => s + x * x, 0)) }));

const completion = await client.completions.create({ model, prompt: "Once upon a time",
                                                     max_tokens: 5, temperature: 0 });
out.completion = { text: completion.choices[0].text, usage: completion.usage };

async function failure(call) {
  try { await call(); return null; } catch (error) {
    return { name: error.constructor.name, status: error.status, param: error.param ?? null,
             code: error.code ?? null };
  }
}
out.errors = {
  unknownModel: await failure(() => client.chat.completions.create({ model: "nope",
                                                                     messages: ask })),
  badParam: await failure(() => client.chat.completions.create({ model, messages: ask,
                                                                 temperature: 9 })),
  badKey: await failure(() => new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
    apiKey: "sk-wrong", maxRetries: 0 }).models.list()),
};
console.log(JSON.stringify(out));
