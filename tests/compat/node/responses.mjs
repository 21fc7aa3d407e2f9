// Drives the appliance's Responses API with the official openai npm client and prints what it
// observed as one JSON object on stdout; tests/compat/test_node_sdk_responses.py asserts on it.
// Usage: APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... \
//        APPLIANCE_MODEL=gemma-3-270m node responses.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
                            apiKey: process.env.APPLIANCE_KEY, maxRetries: 0 });
const model = process.env.APPLIANCE_MODEL;
const ask = "What is the weather in Paris?";
const city = { type: "object", additionalProperties: false, required: ["city"],
               properties: { city: { type: "string", maxLength: 30 } } };
const weather = { type: "function", name: "get_weather", strict: true,
                  description: "The current weather in a city.", parameters: city };
const out = {};
// The text of a response's messages; the stream helper's final response has no output_text
// convenience property (only responses.create adds it).
const textOf = (response) => response.output.filter((item) => item.type === "message")
  .flatMap((item) => item.content).filter((part) => part.type === "output_text")
  .map((part) => part.text).join("");

// Greedy, and ended by a strict schema well inside the budget: the stream helper below must
// assemble the same answer (its final response is built from response.completed).
const cityFormat = { format: { type: "json_schema", name: "city", strict: true, schema: city } };
const plainAsk = { model, input: ask, max_output_tokens: 100, temperature: 0, store: false,
                   text: cityFormat };
const plain = await client.responses.create(plainAsk);
out.plain = { id: plain.id, status: plain.status, text: plain.output_text,
              types: plain.output.map((item) => item.type), usage: plain.usage };

const events = [];
const stream = client.responses.stream(plainAsk);
for await (const event of stream) events.push(event);
const streamed = await stream.finalResponse();
out.stream = {
  kinds: events.map((e) => e.type),
  sequence: events.map((e) => e.sequence_number),
  deltas: events.filter((e) => e.type === "response.output_text.delta")
    .map((e) => e.delta).join(""),
  text: textOf(streamed), status: streamed.status, usage: streamed.usage,
};

// Cut by max_output_tokens: a raw stream that ends with response.incomplete.
const cut = [];
for await (const event of await client.responses.create({ model, max_output_tokens: 16,
    input: "Write a long story about a lighthouse keeper.", temperature: 0, store: false,
    stream: true })) cut.push(event);
const cutEnd = cut[cut.length - 1];
out.cut = { kinds: cut.map((e) => e.type), sequence: cut.map((e) => e.sequence_number),
            status: cutEnd.response.status, reason: cutEnd.response.incomplete_details?.reason,
            usage: cutEnd.response.usage };

// A tool round trip, stateless (the output items go back as input) and chained.
const called = await client.responses.create({ model, input: ask, tools: [weather],
  tool_choice: "required", parallel_tool_calls: false, max_output_tokens: 100, temperature: 0 });
const calls = called.output.filter((item) => item.type === "function_call");
out.tools = { status: called.status, calls: calls.map((c) => ({ name: c.name,
  call_id: c.call_id, arguments: c.arguments })) };
const answer = calls.map((c) => ({ type: "function_call_output", call_id: c.call_id,
                                   output: JSON.stringify({ forecast: "sunny" }) }));
const stateless = await client.responses.create({ model, tools: [weather], tool_choice: "none",
  max_output_tokens: 24, temperature: 0, store: false,
  input: [{ role: "user", content: ask }, ...called.output, ...answer] });
const chained = await client.responses.create({ model, tools: [weather], tool_choice: "none",
  max_output_tokens: 24, temperature: 0, previous_response_id: called.id, input: answer });
const alone = await client.responses.create({ model, tools: [weather], tool_choice: "none",
  max_output_tokens: 24, temperature: 0, store: false, input: ask });
out.roundTrip = {
  stateless: { types: stateless.output.map((i) => i.type), usage: stateless.usage },
  chained: { types: chained.output.map((i) => i.type), usage: chained.usage,
             previous: chained.previous_response_id },
  calledUsage: called.usage, aloneUsage: alone.usage,
};

// The stream helper with a forced function call.
const toolEvents = [];
const toolStream = client.responses.stream({ model, input: ask, tools: [weather],
  tool_choice: { type: "function", name: "get_weather" }, max_output_tokens: 100 });
for await (const event of toolStream) toolEvents.push(event);
const toolFinal = await toolStream.finalResponse();
out.toolStream = {
  kinds: toolEvents.map((e) => e.type),
  done: toolEvents.filter((e) => e.type === "response.function_call_arguments.done")
    .map((e) => e.arguments),
  calls: toolFinal.output.filter((i) => i.type === "function_call")
    .map((c) => ({ name: c.name, arguments: c.arguments })),
};

// A structured output: text.format json_schema, strict, parsed by the SDK's parse helper.
const parsed = await client.responses.parse({ model, input: ask, max_output_tokens: 100,
  temperature: 0, text: { format: { type: "json_schema", name: "city", strict: true,
                                    schema: city } } });
out.structured = { status: parsed.status, text: parsed.output_parsed === null ? null
  : parsed.output_text, parsed: parsed.output_parsed };

async function failure(call) {
  try { await call(); return null; } catch (error) {
    return { name: error.constructor.name, status: error.status, param: error.param ?? null,
             code: error.code ?? null };
  }
}
out.errors = {
  unknownModel: await failure(() => client.responses.create({ model: "nope", input: ask })),
  unknownResponse: await failure(() => client.responses.retrieve("resp_nope")),
  forcedUnknownTool: await failure(() => client.responses.create({ model, input: ask,
    tools: [weather], tool_choice: { type: "function", name: "other" } })),
};
console.log(JSON.stringify(out));
