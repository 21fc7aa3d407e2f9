"""What one grammar-constrained step costs for a JSON Schema ``pattern``: the figures behind
regex_gbnf.py's bound (MAX_VARIABLE_WEIGHT), measured straight on llama.cpp, no server.

Each pattern becomes the grammar the appliance builds for ``{"v": <string with it>}``
(strict), is compiled against the model's vocabulary, reads ``{"v": "`` (the string opened),
and is then applied once to the whole vocabulary, as a constrained draw does; the median of
--rounds such applications is printed, the patterns interleaved round by round. A pattern the
appliance refuses is printed with the first words of its 400.

Usage: scripts/probe-pattern-cost [--model GGUF] [--rounds 3] PATTERN...
(without patterns: the bound's measured cases, allowed and refused)
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import llama_cpp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.engines.base import OutputFormat  # noqa: E402
from appliance.engines.llm.grammar import grammar_for  # noqa: E402
from appliance.engines.llm.sampling import TOKEN_DATA  # noqa: E402
from appliance.errors import InvalidRequest  # noqa: E402

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
CASES = [
    r"^(\+\d{1,2}\s?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}$",
    r"^((25[0-5]|2[0-4]\d|[01]?\d?\d)\.){3}(25[0-5]|2[0-4]\d|[01]?\d?\d)$",
    r"^[^\s@]+@[^\s@]+\.[^\s@]+$",
    "^" + "[a-z]?" * 16 + "$",
    "^(" + "|".join(["a"] * 16) + ")+$",
    r"^([a-z]*|[0-9]*|[A-Z]*)+$",
    "^" + "[a-z]?" * 17 + "$",
    r"^([a-z]*|[a-z]*|[a-z]*|[a-z]*|[a-z]*)+$",
    r"^(([a-z]?[a-z]?)+[a-z]?[a-z]?)+$",
]


class Vocabulary:
    def __init__(self, path: Path):
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if self.model is None:
            raise SystemExit(f"cannot load {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.size = int(llama_cpp.llama_vocab_n_tokens(self.vocab))

    def tokens(self, text: str) -> list[int]:
        data = text.encode()
        out = (llama_cpp.llama_token * (len(data) + 8))()
        count = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, len(out), False,
                                         False)
        return list(out[:count])


def one_step_s(vocabulary: Vocabulary, grammar: str) -> float:
    sampler = llama_cpp.llama_sampler_init_grammar(vocabulary.vocab, grammar.encode(), b"root")
    try:
        for token in vocabulary.tokens('{"v": "'):
            llama_cpp.llama_sampler_accept(sampler, token)
        candidates = np.zeros(vocabulary.size, dtype=TOKEN_DATA)
        candidates["id"] = np.arange(vocabulary.size, dtype=np.int32)
        array = llama_cpp.llama_token_data_array(
            candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            vocabulary.size, -1, False)
        started = time.perf_counter()
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        return time.perf_counter() - started
    finally:
        llama_cpp.llama_sampler_free(sampler)


def grammar_of(pattern: str) -> str:
    schema = {"type": "object", "properties": {"v": {"type": "string", "pattern": pattern}},
              "required": ["v"], "additionalProperties": False}
    return grammar_for(OutputFormat("json_schema", schema, strict=True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("patterns", nargs="*")
    args = parser.parse_args()
    vocabulary = Vocabulary(args.model)
    grammars: dict[str, str] = {}
    refused: dict[str, str] = {}
    for pattern in args.patterns or CASES:
        try:
            grammars[pattern] = grammar_of(pattern)
        except InvalidRequest as error:
            refused[pattern] = error.message.split(": ", 1)[-1][:70]
    times: dict[str, list[float]] = {pattern: [] for pattern in grammars}
    for _ in range(args.rounds):
        for pattern, grammar in grammars.items():
            times[pattern].append(one_step_s(vocabulary, grammar))
    print(f"one constrained step over {vocabulary.size} tokens ({args.model.name}), "
          f"median of {args.rounds}\n")
    print("| pattern | s per step |\n| --- | --- |")
    for pattern in args.patterns or CASES:
        shown = pattern if len(pattern) <= 60 else pattern[:57] + "..."
        if pattern in refused:
            print(f"| `{shown}` | refused: {refused[pattern]} |")
        else:
            print(f"| `{shown}` | {statistics.median(times[pattern]):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
