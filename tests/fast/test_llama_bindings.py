"""The llama.cpp C functions the engines call still have the signatures they were written for.

llama-cpp-python is pinned (pyproject.toml): its low-level functions follow llama.cpp's C API,
which changes between patch releases. A changed signature used to surface as a TypeError deep
in the decode loop (``llama_sampler_init_penalties`` gained ``n_vocab``, and every request with
a penalty hung until its queue timeout); here it fails a fast test that names the function. The
table is the contract: the test that scans the engines' sources fails when they call a function
the table does not pin. Struct fields the engines set are checked too: ctypes lets a script set
a field a struct no longer has, silently.
"""

from __future__ import annotations

import ctypes
import inspect
import re
from typing import Any

import llama_cpp
import pytest
from llama_cpp import _internals
from llama_cpp import _logger as llama_cpp_logger
from llama_cpp.llama_grammar import SchemaConverter

from appliance.engines.base import Sampling
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.sampling import TOKEN_DATA, SamplerChain
from appliance.errors import InvalidRequest
from devtools.server_harness import ROOT, SMOLLM2

VERSION = "0.3.36"
ENGINES = ROOT / "appliance" / "engines"

i32, f32, size_t, boolean = ctypes.c_int32, ctypes.c_float, ctypes.c_size_t, ctypes.c_bool
ptr = ctypes.c_void_p  # llama_model *, llama_context *, llama_vocab *, llama_memory_t
sampler = llama_cpp.llama_sampler_p_ctypes
batch = llama_cpp.llama_batch
token = llama_cpp.llama_token
pos = llama_cpp.llama_pos
seq = llama_cpp.llama_seq_id

# name: (argtypes, restype), as llama.cpp's llama.h declares them in the pinned version.
FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "llama_batch_free": ([batch], None),
    "llama_batch_init": ([i32, i32, i32], batch),
    "llama_context_default_params": ([], llama_cpp.llama_context_params),
    "llama_decode": ([ptr, batch], i32),
    "llama_free": ([ptr], None),
    "llama_get_embeddings_seq": ([ptr, seq], ctypes.POINTER(f32)),
    "llama_get_logits_ith": ([ptr, i32], ctypes.POINTER(f32)),
    "llama_get_memory": ([ptr], ptr),
    "llama_init_from_model": ([ptr, llama_cpp.llama_context_params], ptr),
    "llama_memory_clear": ([ptr, boolean], None),
    "llama_memory_seq_cp": ([ptr, seq, seq, pos, pos], None),
    "llama_memory_seq_rm": ([ptr, seq, pos, pos], boolean),
    "llama_model_default_params": ([], llama_cpp.llama_model_params),
    "llama_model_n_embd": ([ptr], i32),
    "llama_model_n_swa": ([ptr], i32),
    "llama_sampler_accept": ([sampler, token], None),
    "llama_sampler_apply": ([sampler, llama_cpp.llama_token_data_array_p], None),
    "llama_sampler_chain_add": ([sampler, sampler], None),
    "llama_sampler_chain_default_params": ([], llama_cpp.llama_sampler_chain_params),
    "llama_sampler_chain_init": ([llama_cpp.llama_sampler_chain_params], sampler),
    "llama_sampler_free": ([sampler], None),
    "llama_sampler_init_dist": ([ctypes.c_uint32], sampler),
    "llama_sampler_init_grammar": ([ptr, ctypes.c_char_p, ctypes.c_char_p], sampler),
    "llama_sampler_init_greedy": ([], sampler),
    "llama_sampler_init_logit_bias": ([i32, i32, llama_cpp.llama_logit_bias_p], sampler),
    "llama_sampler_init_min_p": ([f32, size_t], sampler),
    # (n_vocab, penalty_last_n, penalty_repeat, penalty_freq, penalty_present)
    "llama_sampler_init_penalties": ([i32, i32, f32, f32, f32], sampler),
    "llama_sampler_init_temp": ([f32], sampler),
    "llama_sampler_init_top_k": ([i32], sampler),
    "llama_sampler_init_top_p": ([f32, size_t], sampler),
    "llama_sampler_sample": ([sampler, ptr, i32], token),
    "llama_state_seq_get_data": ([ptr, ctypes.POINTER(ctypes.c_uint8), size_t, seq], size_t),
    "llama_state_seq_get_size": ([ptr, seq], size_t),
    "llama_state_seq_set_data": ([ptr, ctypes.POINTER(ctypes.c_uint8), size_t, seq], size_t),
    "llama_supports_gpu_offload": ([], boolean),
    "llama_token_to_piece": ([ptr, token, ctypes.c_char_p, i32, i32, boolean], i32),
    "llama_tokenize": ([ptr, ctypes.c_char_p, i32, ctypes.POINTER(token), i32, boolean,
                        boolean], i32),
    "llama_vocab_bos": ([ptr], token),
    "llama_vocab_eos": ([ptr], token),
    "llama_vocab_get_attr": ([ptr, token], ctypes.c_int),
    "llama_vocab_is_eog": ([ptr, token], boolean),
    "llama_vocab_n_tokens": ([ptr], i32),
}
# Structs the engines build or fill: the fields they touch, with their types.
STRUCTS: dict[str, dict[str, Any]] = {
    "llama_token_data": {"id": token, "logit": f32, "p": f32},
    "llama_token_data_array": {"data": ctypes.POINTER(llama_cpp.llama_token_data),
                               "size": size_t, "selected": ctypes.c_int64, "sorted": boolean},
    "llama_logit_bias": {"token": token, "bias": f32},
    "llama_batch": {"n_tokens": i32, "token": ctypes.POINTER(token), "pos": ctypes.POINTER(pos),
                    "n_seq_id": ctypes.POINTER(i32),
                    "seq_id": ctypes.POINTER(ctypes.POINTER(seq)),
                    "logits": ctypes.POINTER(ctypes.c_int8)},
    "llama_context_params": {"n_ctx": ctypes.c_uint32, "n_batch": ctypes.c_uint32,
                             "n_ubatch": ctypes.c_uint32, "n_seq_max": ctypes.c_uint32,
                             "n_threads": i32, "n_threads_batch": i32,
                             "pooling_type": ctypes.c_int, "embeddings": boolean,
                             "no_perf": boolean, "swa_full": boolean, "kv_unified": boolean},
    "llama_model_params": {"n_gpu_layers": i32},
}
CONSTANTS = {"LLAMA_TOKEN_ATTR_UNKNOWN": 1, "LLAMA_TOKEN_ATTR_CONTROL": 8,
             "LLAMA_TOKEN_ATTR_USER_DEFINED": 16, "LLAMA_TOKEN_ATTR_LSTRIP": 128,
             "LLAMA_TOKEN_ATTR_RSTRIP": 256, "LLAMA_POOLING_TYPE_MEAN": 1,
             "LLAMA_POOLING_TYPE_CLS": 2, "LLAMA_POOLING_TYPE_LAST": 3}
# Names of llama_cpp the engines use that are neither functions nor structs above.
OTHER_NAMES = {"llama_token", "llama_grammar"}


def _type_name(kind: Any) -> str:
    return getattr(kind, "__name__", repr(kind))


def test_the_pinned_version_is_installed() -> None:
    assert llama_cpp.__version__ == VERSION, (
        f"llama-cpp-python {llama_cpp.__version__} is installed; the engines were tested "
        f"against {VERSION}: re-check this file's table against its llama_cpp.py, then pin it")


def test_every_llama_cpp_name_the_engines_use_is_pinned_here() -> None:
    used = set()
    for source in ENGINES.rglob("*.py"):
        used |= set(re.findall(r"\bllama_cpp\.(\w+)", source.read_text(encoding="utf-8")))
    unpinned = used - FUNCTIONS.keys() - STRUCTS.keys() - CONSTANTS.keys() - OTHER_NAMES
    assert not unpinned, f"add the signatures of {sorted(unpinned)} to this file's tables"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_signature(name: str) -> None:
    function = getattr(llama_cpp, name, None)
    assert function is not None, f"llama_cpp.{name} is gone"
    argtypes, restype = FUNCTIONS[name]
    got = [_type_name(t) for t in function.argtypes]
    want = [_type_name(t) for t in argtypes]
    assert list(function.argtypes) == argtypes, f"llama_cpp.{name} takes {got}, not {want}"
    assert function.restype is restype, (
        f"llama_cpp.{name} returns {_type_name(function.restype)}, not {_type_name(restype)}")


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_fields(name: str) -> None:
    fields = dict(getattr(llama_cpp, name)._fields_)
    for field, kind in STRUCTS[name].items():
        assert field in fields, f"llama_cpp.{name} has no field {field!r} any more"
        assert fields[field] is kind, (
            f"llama_cpp.{name}.{field} is {_type_name(fields[field])}, not {_type_name(kind)}")


def test_constants() -> None:
    assert {name: getattr(llama_cpp, name, None) for name in CONSTANTS} == CONSTANTS


def test_the_python_level_helpers_the_model_uses() -> None:
    parameters = inspect.signature(_internals.LlamaModel).parameters
    assert {"path_model", "params", "verbose"} <= parameters.keys()
    for method in ("n_ctx_train", "add_bos_token", "metadata", "token_get_text", "close"):
        assert callable(getattr(_internals.LlamaModel, method, None)), method
    assert callable(llama_cpp_logger.set_verbose)
    assert callable(getattr(SchemaConverter, "visit", None))
    assert TOKEN_DATA.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)


@pytest.fixture(scope="module")
def model() -> Any:
    loaded = LoadedModel(SMOLLM2, 0)
    yield loaded
    loaded.close()


def _penalised(model: LoadedModel, sampling: Sampling, accepted: list[int],
               logits: dict[int, float]) -> dict[int, float]:
    """Logits after the request's chain, having seen ``accepted`` as generated tokens."""
    chain = SamplerChain(sampling, model, penalty_window=64)
    try:
        for seen in accepted:
            llama_cpp.llama_sampler_accept(chain.handle, seen)
        ids = sorted(logits)
        data = (llama_cpp.llama_token_data * len(ids))()
        for at, token_id in enumerate(ids):
            data[at].id, data[at].logit, data[at].p = token_id, logits[token_id], 0.0
        array = llama_cpp.llama_token_data_array(data, len(ids), -1, False)
        llama_cpp.llama_sampler_apply(chain.handle, ctypes.byref(array))
        return {int(array.data[at].id): float(array.data[at].logit) for at in range(array.size)}
    finally:
        chain.close()


def test_penalties_have_openais_meaning(model: LoadedModel) -> None:
    # OpenAI: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty,
    # counts over the generated tokens (the chain accepts only those; see scheduler.py).
    logits = {10: 1.0, 20: 1.0, 30: 1.0}
    seen = [10, 10, 10, 20]
    after = _penalised(model, Sampling(temperature=0, frequency_penalty=0.5), seen, logits)
    assert after == pytest.approx({10: 1.0 - 1.5, 20: 1.0 - 0.5, 30: 1.0})
    after = _penalised(model, Sampling(temperature=0, presence_penalty=0.5), seen, logits)
    assert after == pytest.approx({10: 0.5, 20: 0.5, 30: 1.0})
    after = _penalised(model, Sampling(temperature=0, frequency_penalty=-1.0), seen, logits)
    assert after[10] == pytest.approx(4.0)  # negative: repetition encouraged
    after = _penalised(model, Sampling(temperature=0, repeat_penalty=2.0), seen, logits)
    assert after == pytest.approx({10: 0.5, 20: 0.5, 30: 1.0})  # llama.cpp's, divides


def test_every_sampler_of_a_chain_can_be_built(model: LoadedModel) -> None:
    everything = Sampling(temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, seed=1,
                          presence_penalty=0.5, frequency_penalty=0.5, repeat_penalty=1.1,
                          logit_bias=((5, -100.0),), grammar='root ::= "a"')
    chain = SamplerChain(everything, model, 64)
    assert chain.handle is not None
    chain.close()


class _DrawsOnly(SamplerChain):
    """A chain whose draws give one token, whatever the logits (no context needed)."""

    drawn = 0

    def _draw(self, context: object, batch_index: int, constrained: bool) -> int:
        return self.drawn


def test_a_constraint_no_token_can_meet_fails_the_request_not_the_process(
        model: LoadedModel) -> None:
    """The code point 0 in a grammar literal matches no token: the constrained draw fell back
    to a token the grammar refuses, and accepting it made llama.cpp abort the process
    (GGML_ABORT in llama-grammar.cpp, every model and request gone)."""
    chain = _DrawsOnly(Sampling(temperature=0, grammar='root ::= "\\x00"'), model, 64)
    try:
        for drawn in (model.bos, int(llama_cpp.llama_vocab_eos(model.vocab)), 0, 100):
            chain.drawn = drawn
            with pytest.raises(InvalidRequest, match="allows no token"):
                chain.sample(None, 0)
    finally:
        chain.close()


def _sampler_names(chain: SamplerChain) -> list[str]:
    count = llama_cpp.llama_sampler_chain_n(chain.handle)
    return [llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(chain.handle, i))
            .decode() for i in range(count)]


@pytest.mark.parametrize("temperature", [0.0, 1e-39, 1e-45, 5e-5])
def test_a_temperature_near_zero_draws_greedily(model: LoadedModel, temperature: float) -> None:
    """Logits divided by 1e-39 in float32 overflowed: NaN probabilities, noise for output."""
    chain = SamplerChain(Sampling(temperature=temperature), model, 64)
    try:
        assert _sampler_names(chain) == ["greedy"]
    finally:
        chain.close()
