// Text to speech with the official openai npm client: audio.speech.create for a whole file,
// the same response read as a stream of chunks, and stream_format "sse". Prints what it
// observed as one JSON object; tests/compat/test_speech_sdks.py asserts on it.
// Usage: APPLIANCE_BASE_URL=http://127.0.0.1:PORT/v1 APPLIANCE_KEY=sk-... node speech.mjs
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.APPLIANCE_BASE_URL,
                            apiKey: process.env.APPLIANCE_KEY, maxRetries: 0 });
const input = "Hello from the npm client. This is a second sentence.";
const out = {};

const wav = await client.audio.speech.create({ model: "tts-1", voice: "alloy", input,
                                               response_format: "wav" });
const bytes = Buffer.from(await wav.arrayBuffer());
out.wav = { type: wav.headers.get("content-type"), bytes: bytes.length,
            head: bytes.subarray(0, 4).toString("latin1") };

const streamed = await client.audio.speech.create({ model: "gpt-4o-mini-tts", voice: "nova",
                                                    input, response_format: "mp3" });
let chunks = 0;
let total = 0;
for await (const chunk of streamed.body) {
  chunks += 1;
  total += chunk.length;
}
out.stream = { type: streamed.headers.get("content-type"), chunks, bytes: total };

const sse = await client.audio.speech.create({ model: "tts-1", voice: "echo", input,
                                               response_format: "pcm", stream_format: "sse" });
const events = (await sse.text()).split("\n").filter((line) => line.startsWith("data: "))
  .map((line) => JSON.parse(line.slice(6)));
out.sse = { type: sse.headers.get("content-type"), events: events.map((e) => e.type),
            audioBytes: events.filter((e) => e.audio)
              .reduce((n, e) => n + Buffer.from(e.audio, "base64").length, 0),
            usage: events.at(-1).usage };

try {
  await client.audio.speech.create({ model: "tts-1", voice: "nobody", input });
  out.badVoice = { status: 200 };
} catch (error) {
  out.badVoice = { status: error.status, param: error.param ?? error.error?.param };
}
console.log(JSON.stringify(out));
