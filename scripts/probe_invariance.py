"""Whether a token's logits depend on the shape of the step that computed it: the facts behind
the README's promise that concurrency does not change an answer, measured straight on
llama.cpp (one context as the appliance makes it, SmolLM2-135M, no server).

llama.cpp's CPU attention picks its kernel by the shape of each micro-batch, and the kernels
add their floats in different orders. Two things about a request vary with load:

- how its prompt is read: in one batch when nobody is generating, in chunks the step budget
  sizes while streams run, or partly from cache;
- whether its sequence is alone in a step or beside others.

For each prompt length the script reads a fixed random prompt in chunks of each size (its
last token alone, as the scheduler does), and in chunks of 8 each in a step beside three
decoding sequences, and compares the last token's logits with reading it in one batch; then
it decodes greedy steps after the prompt alone and beside three other sequences and compares
those logits. "identical" is bit for bit.

Usage: scripts/probe-invariance [--flash-attn auto|off] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import context_params
from devtools.server_harness import SMOLLM2

CONTEXT = 4096
BATCH = 512
PROMPT_LENGTHS = (40, 100, 300, 700)
CHUNKS = (1, 2, 3, 8, 32, 63, 64, 100)
BESIDE_CHUNK = 8  # the chunk read beside decoding neighbours
DECODE_AFTER = (100, 240, 300, 600)
DECODE_STEPS = 8
NEIGHBOURS = (1, 2, 3)
FLASH_ATTN = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}

Logits = npt.NDArray[np.float32]
Token = tuple[int, int, int, bool]  # token, position, sequence, wants logits


class Probe:
    def __init__(self, threads: int, flash_attn: int):
        self._model = LoadedModel(SMOLLM2, 0)
        params = context_params(8, CONTEXT, threads, BATCH)
        params.flash_attn_type = flash_attn
        self._context = llama_cpp.llama_init_from_model(self._model.handle, params)
        if self._context is None:
            raise SystemExit(f"could not make a context for {SMOLLM2}")
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = TokenBatch(BATCH)
        self._vocab = llama_cpp.llama_vocab_n_tokens(
            llama_cpp.llama_model_get_vocab(self._model.handle))
        generator = np.random.default_rng(1)  # the same prompt in every run
        self._prompt = [int(t) for t in generator.integers(200, 20000, max(PROMPT_LENGTHS))]

    def close(self) -> None:
        self._batch.close()
        llama_cpp.llama_free(self._context)
        self._model.close()

    def _decode(self, tokens: list[Token]) -> dict[int, Logits]:
        """One llama_decode; the logits of each sequence's token that wants them."""
        self._batch.clear()
        wanted: dict[int, int] = {}
        for token, position, sequence, logits in sorted(tokens, key=lambda t: t[2]):
            index = self._batch.add(token, position, sequence, logits)
            if logits:
                wanted[sequence] = index
        if llama_cpp.llama_decode(self._context, self._batch.handle) != 0:
            raise SystemExit("llama_decode failed")
        return {sequence: np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(self._context, index),
                    shape=(self._vocab,)).copy()
                for sequence, index in wanted.items()}

    def read(self, sequence: int, length: int, chunk: int,
             neighbours: tuple[int, ...] = ()) -> Logits:
        """The prompt's first ``length`` tokens into a cleared sequence: all but the last in
        chunks of ``chunk``, each in a step with one token of every neighbour (which hold
        short contexts of their own), the last alone; its logits."""
        for other in neighbours:
            self.read(other, 100 + other, BATCH)
        llama_cpp.llama_memory_seq_rm(self._memory, sequence, -1, -1)
        position = 0
        step = 0
        while position < length - 1:
            count = min(chunk, length - 1 - position)
            tokens = [(self._prompt[position + j], position + j, sequence, False)
                      for j in range(count)]
            tokens += [(300 + step, 100 + s + step, s, False) for s in neighbours]
            self._decode(tokens)
            position += count
            step += 1
        return self._decode([(self._prompt[length - 1], length - 1, sequence, True)])[sequence]

    def generate(self, length: int, neighbours: tuple[int, ...]) -> list[Logits]:
        """Greedy steps of sequence 0 after its prompt, each beside one token of every
        neighbour (which hold short contexts of their own)."""
        last = self.read(0, length, BATCH)
        for sequence in neighbours:
            self.read(sequence, 100 + sequence, BATCH)
        found = []
        token = int(np.argmax(last))
        for step in range(DECODE_STEPS):
            tokens = [(token, length + step, 0, True)]
            tokens += [(300 + step, 100 + s + step, s, True) for s in neighbours]
            logits = self._decode(tokens)[0]
            found.append(logits)
            token = int(np.argmax(logits))
        return found


def verdict(a: Logits, b: Logits) -> str:
    difference = float(np.max(np.abs(a - b)))
    return "identical" if difference == 0 else f"differs (max |logit change| {difference:.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(prog="probe-invariance",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--flash-attn", choices=sorted(FLASH_ATTN), default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not 1 <= args.threads <= 256:
        parser.error("--threads 1..256")
    probe = Probe(args.threads, FLASH_ATTN[args.flash_attn])
    try:
        print(f"{SMOLLM2.name}, {args.threads} threads, 8 KV streams, flash attention "
              f"{args.flash_attn}; against the prompt read in one batch:")
        for length in PROMPT_LENGTHS:
            whole = probe.read(0, length, BATCH)
            for chunk in CHUNKS:
                print(f"  prompt of {length:4d}, chunks of {chunk:3d}: "
                      f"{verdict(probe.read(0, length, chunk), whole)}")
            beside = probe.read(0, length, BESIDE_CHUNK, NEIGHBOURS)
            print(f"  prompt of {length:4d}, chunks of {BESIDE_CHUNK:3d} beside "
                  f"{len(NEIGHBOURS)} decoding: {verdict(beside, whole)}")
        print(f"greedy decoding, alone against beside {len(NEIGHBOURS)} other sequences, "
              f"{DECODE_STEPS} steps:")
        for length in DECODE_AFTER:
            alone = probe.generate(length, ())
            beside = probe.generate(length, NEIGHBOURS)
            worst = max(zip(alone, beside, strict=True),
                        key=lambda pair: float(np.max(np.abs(pair[0] - pair[1]))))
            print(f"  after a prompt of {length:4d}: {verdict(*worst)}")
    finally:
        probe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
