"""What one decode step costs on this machine, by its shape: the facts the step budget and the
batch layout rest on (issue 18), measured straight on llama.cpp, no server.

One llama.cpp context as the appliance makes it (a KV stream per sequence, --slots sequences,
n_batch = n_ubatch = 512, --threads threads, flash attention auto) on SmolLM2-135M. In each of
--rounds rounds every case in turn primes its sequences' KV to its positions (one sequence
decoded, copied to the others) and times --steps consecutive llama_decode calls of its shape;
the cases interleave round by round (this box is noisy: medians, and ratios within one run):

- chunk sizes: one sequence reading n prompt tokens at position 200; ms per token;
- layout: 7 decoding slots and an 8-token chunk in slot 3, the chunk written after the
  decode tokens or in sequence order (llama.cpp makes one pass per run of consecutive
  sequences with as many tokens each);
- placement: 4 decoding slots in sequences 0-3 or 0, 2, 4, 6;
- position: 3 slots decoding at 100 and 4 prompt tokens at 100 or at 1,400, and decoding
  alone at 100 or 1,400 (attention reads every earlier token).

Usage: scripts/probe-steps [--rounds 3] [--steps 5] [--threads 2] [--slots 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root
from appliance.engines.llm.batch import TokenBatch
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.scheduler import context_params
from devtools.server_harness import SMOLLM2

CONTEXT = 4096  # tokens per sequence, as bench-concurrency configures the appliance
PRIME_CHUNK = 512

Token = tuple[int, int, int, bool]  # token, position, sequence, wants logits


@dataclass
class Case:
    label: str
    primes: dict[int, int]  # sequence -> tokens of KV it holds before the first rep
    shape: Callable[[int], list[Token]]  # rep -> the batch
    per_token: int = 0  # > 0: also print ms per token for this many tokens, each step undone
    times: list[float] = field(default_factory=list)


class Probe:
    def __init__(self, threads: int, slots: int):
        self._model = LoadedModel(SMOLLM2, 0)
        self._context = llama_cpp.llama_init_from_model(
            self._model.handle, context_params(slots, CONTEXT, threads, PRIME_CHUNK))
        if self._context is None:
            raise SystemExit(f"could not make a context for {SMOLLM2}")
        self._memory = llama_cpp.llama_get_memory(self._context)
        self._batch = TokenBatch(PRIME_CHUNK)

    def close(self) -> None:
        self._batch.close()
        llama_cpp.llama_free(self._context)
        self._model.close()

    def decode(self, tokens: list[Token]) -> float:
        self._batch.clear()
        for token, position, sequence, logits in tokens:
            self._batch.add(token, position, sequence, logits)
        started = time.perf_counter()
        if llama_cpp.llama_decode(self._context, self._batch.handle) != 0:
            raise SystemExit("llama_decode failed")
        return time.perf_counter() - started

    def prime(self, primes: dict[int, int]) -> None:
        """Each listed sequence holds that many tokens of KV: the longest is decoded once and
        copied, cut to length, into the others."""
        llama_cpp.llama_memory_clear(self._memory, True)
        longest = max(primes.values())
        for start in range(0, longest, PRIME_CHUNK):
            count = min(PRIME_CHUNK, longest - start)
            self.decode([(100 + (start + j) % 300, start + j, 0, False) for j in range(count)])
        for sequence, length in primes.items():
            if sequence != 0:
                llama_cpp.llama_memory_seq_cp(self._memory, 0, sequence, -1, -1)
                llama_cpp.llama_memory_seq_rm(self._memory, sequence, length, -1)
        if 0 in primes:
            llama_cpp.llama_memory_seq_rm(self._memory, 0, primes[0], -1)
        else:
            llama_cpp.llama_memory_seq_rm(self._memory, 0, -1, -1)
        # Copies across streams are applied at the next decode: one untimed token, undone.
        flush = primes.get(0, 0)
        self.decode([(5, flush, 0, False)])
        self.trim(0, flush)

    def trim(self, sequence: int, keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, sequence, keep, -1)


def decoding(sequences: list[int], position: int) -> Callable[[int], list[Token]]:
    return lambda rep: [(200, position + rep, s, True) for s in sequences]


def chunk(sequence: int, position: int, count: int, rep: int) -> list[Token]:
    start = position + rep * count
    return [(300 + j % 40, start + j, sequence, j == count - 1) for j in range(count)]


def same_chunk(count: int) -> Callable[[int], list[Token]]:
    """The same ``count`` prompt tokens at 200 every step (each step is undone after)."""
    return lambda rep: chunk(0, 200, count, 0)


def cases() -> list[Case]:
    found = [Case(f"chunk of {n} at 200", {0: 200}, same_chunk(n), n)
             for n in (1, 4, 8, 16, 32, 64, 128, 512)]
    others = [s for s in range(8) if s != 3]
    found += [
        Case("7 decoding + 8-token chunk in slot 3, chunk last", {s: 300 for s in range(8)},
             lambda rep: decoding(others, 300)(rep) + chunk(3, 300, 8, rep)),
        Case("7 decoding + 8-token chunk in slot 3, in sequence order",
             {s: 300 for s in range(8)},
             lambda rep: sorted(decoding(others, 300)(rep) + chunk(3, 300, 8, rep),
                                key=lambda t: t[2])),
        Case("4 decoding in sequences 0-3", {s: 300 for s in range(8)},
             decoding([0, 1, 2, 3], 300)),
        Case("4 decoding in sequences 0, 2, 4, 6", {s: 300 for s in range(8)},
             decoding([0, 2, 4, 6], 300)),
        Case("3 decoding at 100 + 4 prompt tokens at 100", {0: 100, 1: 100, 2: 100, 3: 100},
             lambda rep: chunk(0, 100, 4, rep) + decoding([1, 2, 3], 100)(rep)),
        Case("3 decoding at 100 + 4 prompt tokens at 1,400", {0: 1400, 1: 100, 2: 100, 3: 100},
             lambda rep: chunk(0, 1400, 4, rep) + decoding([1, 2, 3], 100)(rep)),
        Case("3 decoding at 100", {1: 100, 2: 100, 3: 100}, decoding([1, 2, 3], 100)),
        Case("3 decoding at 1,400", {1: 1400, 2: 1400, 3: 1400}, decoding([1, 2, 3], 1400)),
    ]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(prog="probe-steps", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    if not 1 <= args.rounds <= 100 or not 1 <= args.steps <= 100 \
            or not 1 <= args.threads <= 256 or not 8 <= args.slots <= 64:
        parser.error("--rounds and --steps 1..100, --threads 1..256, --slots 8..64")
    probe = Probe(args.threads, args.slots)
    found = cases()
    try:
        for _ in range(args.rounds):  # interleaved: every case once per round
            for case in found:
                probe.prime(case.primes)
                for step in range(args.steps):
                    case.times.append(probe.decode(case.shape(step)))
                    if case.per_token:  # the same chunk at the same position every step
                        probe.trim(0, case.primes[0])
    finally:
        probe.close()
    print(f"{SMOLLM2.name}, {args.threads} threads, {args.slots} KV streams, "
          f"medians of {args.rounds} interleaved rounds x {args.steps} steps")
    width = max(len(case.label) for case in found)
    for case in found:
        median = statistics.median(case.times) * 1000
        extra = f"  {median / case.per_token:5.1f} ms/token" if case.per_token else ""
        print(f"  {case.label:<{width}}  {median:7.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
