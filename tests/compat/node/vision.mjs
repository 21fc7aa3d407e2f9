// Sends a picture through the official openai npm client (an image_url data URL part, plain
// and streamed; a Responses input_image part) and prints what it observed as one JSON object;
// tests/compat/test_vision_sdks.py asserts on it.
// Usage: APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... \
//        APPLIANCE_MODEL=gpt-4.1-mini APPLIANCE_IMAGE=data:image/png;base64,... node vision.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
                            apiKey: process.env.APPLIANCE_KEY, maxRetries: 0 });
const model = process.env.APPLIANCE_MODEL;
const url = process.env.APPLIANCE_IMAGE;
const messages = [{ role: "user", content: [
  { type: "text", text: "What is in this picture?" },
  { type: "image_url", image_url: { url, detail: "low" } }] }];
const out = {};

const models = await client.models.list();
out.modalities = Object.fromEntries(models.data.map((m) => [m.id, m.input_modalities ?? null]));

const plain = await client.chat.completions.create({ model, messages, max_tokens: 8,
                                                     temperature: 0 });
out.plain = { content: plain.choices[0].message.content, finish: plain.choices[0].finish_reason,
              usage: plain.usage };

let streamed = "";
let usage = null;
const stream = await client.chat.completions.create({ model, messages, max_tokens: 8,
  temperature: 0, stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  if (chunk.choices.length) streamed += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
out.stream = { content: streamed, usage };

const response = await client.responses.create({ model, max_output_tokens: 16, temperature: 0,
  input: [{ role: "user", content: [{ type: "input_text", text: "What is in this picture?" },
                                    { type: "input_image", image_url: url, detail: "low" }] }] });
out.responses = { status: response.status, text: response.output_text, usage: response.usage };

console.log(JSON.stringify(out));
