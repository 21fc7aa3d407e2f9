"""First request after ready, for every model kind: is the first as fast as the ones after it?

The seed's promise ("no cold starts") measured as issue 18 asks. For each kind, --boots times:
boot an appliance that serves that kind's model alone (so its first request is the server's
first, paying whatever the api still pays on first use too), open the client's connection with
one cheap request on the same client (GET /v1/models), then send ten requests one after another,
each with an input no earlier one had (no prefix, prompt or result cache can help). Printed per
kind and boot: the first request's latency, the median of the next nine, their ratio; the
target is a ratio of at most 1.2 in every boot.

The latency taken, per kind:
- chat: TTFT of a streaming chat completion (send to the first content chunk), a ~50-token
  prompt with an opening of its own, max_tokens 8;
- embedding: the whole request, one input of ~40 tokens with a unique opening;
- transcription: the whole request, ~3 s of espeak-ng speech of a sentence of its own
  (plain words: see Inputs.spoken);
- image: the whole request (default size, default response_format), a prompt and seed of its
  own;
- speech: the whole request to its last byte (default format, mp3), a sentence of its own.

The client is warmed too, on canned replies from a mock transport (the same request function
against a fake server): the openai SDK's own first-use costs (its first chat stream ~40 ms,
numpy imported for its first base64 embedding ~80 ms, its first multipart upload ~120 ms,
measured) are the client's, not the appliance's, and on a 2-core box that work also takes
a core from the server's first prefill. --cold-client leaves it out, to show it.

The models are those of the repository's models.toml (SmolLM2-135M for chat and embedding,
whisper-tiny.en, tiny-random-sd, piper-joe-medium), configured as there.

Usage: scripts/bench-first [--kinds chat,embedding,transcription,image,speech] [--boots 2]
       [--appliance-root PATH] [--cold-client]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shlex
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
from devtools import server_harness as harness
from devtools.server_harness import (
    PIPER_MODEL,
    ROOT,
    SMOLLM2,
    TINY_SD,
    WHISPER_TINY,
    create_key,
    free_port,
    toml_string,
)

REQUESTS = 10  # the first, then nine to compare it with
TARGET_RATIO = 1.2
BOOT_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 300.0
CHAT_MAX_TOKENS = 8

SUBJECTS = ("a lighthouse keeper", "a robot baker", "two desert travellers", "a wind whisperer",
            "an old clockmaker", "a cat mayor", "a stranded sailor", "a night librarian",
            "a young astronomer", "a circus chef", "a timid dragon", "a frozen-lake postman")
PLACES = ("by the harbour", "in a mountain town", "on a night train", "under a glass dome",
          "beside a quiet river", "at the winter market", "in an orchard", "on a windy island")


class Inputs:
    """Texts no earlier request had. Each opens with a digest of the run's nonce and its
    serial: a shared opening (a fixed word, the nonce) would be a prefix the later requests
    reuse from the cache and the first cannot, which favours them."""

    def __init__(self, seed: int) -> None:
        self._nonce = f"{seed:08x}"
        self._serial = 0
        self.seed = seed

    def sentence(self) -> str:
        self._serial += 1
        n = self._serial
        opening = hashlib.sha256(f"{self._nonce}-{n}".encode()).hexdigest()[:8]
        return (f"{opening}: {SUBJECTS[n % len(SUBJECTS)]} {PLACES[n * 3 % len(PLACES)]} "
                f"counts {n * 7 % 97} lanterns before dawn.")

    def spoken(self) -> str:
        """A sentence of plain words, unique by its words and number (no cache holds audio or
        speech; a spelled-out digest made whisper fall back to hotter decodes now and then,
        a 6 s request among 1 s ones, which is the audio's doing, not a cold start)."""
        self._serial += 1
        n = self._serial
        return (f"{SUBJECTS[n % len(SUBJECTS)].capitalize()} {PLACES[n * 3 % len(PLACES)]} "
                f"counts {n * 7 % 97 + 3} lanterns before dawn.")

    def prompt(self) -> str:
        return (self.sentence() + " Write a long story about it, told in the first person, "
                "with three chapters, vivid details and a happy ending.")


# --- the kinds ---

Request = Callable[[openai.OpenAI, Inputs, Path], float]  # one request's latency, seconds


def chat_ttft(client: openai.OpenAI, inputs: Inputs, _: Path) -> float:
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="bench-chat", messages=[{"role": "user", "content": inputs.prompt()}],
        stream=True, temperature=0, max_tokens=CHAT_MAX_TOKENS)
    first = None
    for chunk in stream:
        if first is None and any(choice.delta.content for choice in chunk.choices):
            first = time.perf_counter()
    if first is None:
        raise RuntimeError("the chat stream carried no content")
    return first - started


def embedding(client: openai.OpenAI, inputs: Inputs, _: Path) -> float:
    started = time.perf_counter()
    result = client.embeddings.create(model="bench-embedding",
                                      input=inputs.sentence() + " " + inputs.sentence())
    if not result.data:
        raise RuntimeError("no embedding came back")
    return time.perf_counter() - started


def transcription(client: openai.OpenAI, inputs: Inputs, folder: Path) -> float:
    wav = folder / f"speech-{inputs.seed:08x}-{time.monotonic_ns()}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), inputs.spoken()],
                   check=True, timeout=60)
    with wav.open("rb") as audio:  # made before the clock starts
        started = time.perf_counter()
        result = client.audio.transcriptions.create(model="bench-transcription", file=audio)
        took = time.perf_counter() - started
    wav.unlink()
    if not result.text:
        raise RuntimeError("the transcription came back empty")
    return took


def image(client: openai.OpenAI, inputs: Inputs, _: Path) -> float:
    seed = random.Random(inputs.sentence()).randrange(2**31)
    started = time.perf_counter()
    result = client.images.generate(model="bench-image", prompt=inputs.sentence(),
                                    extra_body={"seed": seed})
    if not result.data:
        raise RuntimeError("no image came back")
    return time.perf_counter() - started


def speech(client: openai.OpenAI, inputs: Inputs, _: Path) -> float:
    started = time.perf_counter()
    response = client.audio.speech.create(model="bench-speech", voice="alloy",
                                          input=inputs.spoken())
    if not response.content:  # the whole body, read
        raise RuntimeError("no audio came back")
    return time.perf_counter() - started


@dataclass(frozen=True)
class Kind:
    name: str
    latency: str  # which latency is taken, for the table
    models_toml: str
    request: Request


def kinds() -> dict[str, Kind]:
    chat = (f'[[models]]\nid = "bench-chat"\nkind = "chat"\npath = {toml_string(str(SMOLLM2))}\n'
            "context_length = 4096\nparallel = 8\n")
    embed = (f'[[models]]\nid = "bench-embedding"\nkind = "embedding"\n'
             f'path = {toml_string(str(SMOLLM2))}\npooling = "mean"\ncontext_length = 2048\n')
    whisper = (f'[[models]]\nid = "bench-transcription"\nkind = "transcription"\n'
               f"path = {toml_string(str(WHISPER_TINY))}\nworkers = 2\n")
    diffusion = (f'[[models]]\nid = "bench-image"\nkind = "image"\n'
                 f"path = {toml_string(str(TINY_SD))}\nworkers = 1\nsteps = 4\n"
                 'sizes = ["256x256", "512x512", "1024x1024"]\n')
    piper = PIPER_MODEL.replace('id = "piper-joe-medium"', 'id = "bench-speech"')
    return {k.name: k for k in (
        Kind("chat", "TTFT, streaming", chat, chat_ttft),
        Kind("embedding", "whole request", embed, embedding),
        Kind("transcription", "whole request", whisper, transcription),
        Kind("image", "whole request", diffusion, image),
        Kind("speech", "whole request (mp3)", piper, speech),
    )}


# --- the client's own warm-up ---

CANNED_CHUNK = {"id": "warm", "object": "chat.completion.chunk", "created": 0, "model": "warm",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                             "finish_reason": None}]}


def canned_reply(request: httpx2.Request) -> httpx2.Response:
    """What each endpoint answers, in its shape, so the SDK runs its whole path."""
    path = request.url.path
    if path.endswith("/chat/completions"):
        body = f"data: {json.dumps(CANNED_CHUNK)}\n\n" * 2 + "data: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"},
                              content=body.encode())
    if path.endswith("/embeddings"):
        # The SDK asks for base64 and decodes it with numpy, imported on first use (~100 ms):
        # the canned reply answers in the encoding asked for, so that path runs here too.
        vector: list[float] | str = [0.6, 0.8]
        if json.loads(request.content).get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack("<2f", 0.6, 0.8)).decode()
        return httpx2.Response(200, json={
            "object": "list", "model": "warm", "usage": {"prompt_tokens": 1, "total_tokens": 1},
            "data": [{"object": "embedding", "index": 0, "embedding": vector}]})
    if path.endswith("/audio/transcriptions"):
        return httpx2.Response(200, json={"text": "warm"})
    if path.endswith("/images/generations"):
        return httpx2.Response(200, json={"created": 0, "data": [{"b64_json": "AAAA"}]})
    if path.endswith("/audio/speech"):
        return httpx2.Response(200, headers={"content-type": "audio/mpeg"}, content=b"\xff" * 64)
    return httpx2.Response(404, json={"error": {"message": "not canned", "type": "warm"}})


def warm_client(kind: Kind, inputs: Inputs, folder: Path) -> None:
    """The kind's request function once against canned replies: the SDK's first-use work
    (its models, parsers, stream reader) is done before the real server is asked."""
    with openai.OpenAI(base_url="http://warm.invalid/v1", api_key="warm", max_retries=0,
                       http_client=httpx2.Client(transport=httpx2.MockTransport(canned_reply))
                       ) as fake:
        kind.request(fake, inputs, folder)


# --- one boot ---


@dataclass(frozen=True)
class Series:
    kind: str
    boot: int
    boot_s: float
    latencies: tuple[float, ...]

    @property
    def first(self) -> float:
        return self.latencies[0]

    @property
    def rest(self) -> float:
        return statistics.median(self.latencies[1:])

    @property
    def ratio(self) -> float:
        return self.first / self.rest


def one_boot(kind: Kind, boot: int, inputs: Inputs, cold_client: bool) -> Series:
    with tempfile.TemporaryDirectory(prefix="bench-first-") as tmp:
        folder = Path(tmp)
        if not cold_client:
            warm_client(kind, inputs, folder)
        port = free_port()
        config = harness.write_config(folder, port, kind.models_toml)
        key = create_key(config, "bench")
        server = harness.start_server(config, port, timeout=BOOT_TIMEOUT_S, poll_s=0.05)
        try:
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key,
                                   max_retries=0, timeout=REQUEST_TIMEOUT_S)
            client.models.list()  # the connection, opened and kept by the client's pool
            latencies = tuple(kind.request(client, inputs, folder) for _ in range(REQUESTS))
            client.close()
        finally:
            server.stop()
            problems = [line for line in server.log().splitlines()
                        if any(w in line for w in ("ERROR", "Traceback"))]
            for line in problems[:10]:
                print(f"    server log: {line[:200]}")
    series = Series(kind.name, boot, server.boot_s, latencies)
    print(f"  {kind.name:<13} boot {boot + 1}: ready in {series.boot_s:.1f} s; ms "
          f"{' '.join(f'{x * 1000:.0f}' for x in latencies)}", flush=True)
    return series


# --- main ---


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kinds", default=",".join(kinds()),
                        help="comma separated, of: " + ", ".join(kinds()))
    parser.add_argument("--boots", type=int, default=2, help="boots per kind (default 2)")
    parser.add_argument("--appliance-root", type=Path, default=ROOT,
                        help="the checkout whose appliance is served (default this one)")
    parser.add_argument("--seed", type=int, default=None, help="input nonce (default random)")
    parser.add_argument("--cold-client", action="store_true",
                        help="leave out the client's warm-up on canned replies")
    args = parser.parse_args()
    args.kind_list = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(args.kind_list) - set(kinds()):
        parser.error(f"--kinds: unknown {', '.join(sorted(unknown))}")
    if not args.kind_list or not 1 <= args.boots <= 20:
        parser.error("--kinds needs at least one kind and --boots must be 1..20")
    if not (args.appliance_root / "appliance" / "cli.py").is_file():
        parser.error(f"--appliance-root {args.appliance_root}: no appliance/cli.py there")
    return args


def main() -> int:
    args = parse_args()
    # The appliance's code (its `keys create` too) from the chosen checkout; libraries from
    # this venv.
    os.environ["PYTHONPATH"] = str(args.appliance_root.resolve())
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    inputs = Inputs(seed)
    print(f"command: {shlex.join(sys.orig_argv)}")
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())};"
          f" appliance from {args.appliance_root.resolve()}; {REQUESTS} requests per boot; "
          f"input nonce {seed:08x}; client "
          f"{'cold (no canned warm-up)' if args.cold_client else 'warmed on canned replies'}",
          flush=True)
    started = time.perf_counter()
    table = kinds()
    results: list[Series] = []
    # Boots alternate across kinds (chat, embedding, ..., chat, embedding, ...), so drift in
    # the machine falls on every kind alike.
    for boot in range(args.boots):
        for name in args.kind_list:
            results.append(one_boot(table[name], boot, inputs, args.cold_client))
    print(f"\nfirst request after ready vs the median of the next {REQUESTS - 1} "
          f"(target <= {TARGET_RATIO}x in every boot)")
    header = f"  {'kind':<13} {'latency taken':<22} {'boot':>4} {'first ms':>9} " \
             f"{'next 9 p50 ms':>13} {'ratio':>6}"
    print(header)
    verdicts = []
    for name in args.kind_list:
        mine = [s for s in results if s.kind == name]
        for s in mine:
            print(f"  {name:<13} {table[name].latency:<22} {s.boot + 1:>4} "
                  f"{s.first * 1000:>9.1f} {s.rest * 1000:>13.1f} {s.ratio:>6.2f}")
        worst = max(s.ratio for s in mine)
        verdicts.append(f"  verdict {name}: {'PASS' if worst <= TARGET_RATIO else 'FAIL'} "
                        f"(ratios {', '.join(f'{s.ratio:.2f}' for s in mine)}; worst "
                        f"{worst:.2f} vs {TARGET_RATIO})")
    print()
    for line in verdicts:
        print(line)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
