"""A grammar llama.cpp cannot parse is a 400 before any work, not a sampler that constrains
nothing (this build answers a parse failure with a sampler, not NULL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appliance.engines.llm.grammar import JSON_OBJECT_GBNF
from appliance.engines.llm.model import LoadedModel
from appliance.errors import InvalidRequest
from devtools.server_harness import SMOLLM2


@pytest.fixture(scope="module")
def model() -> Iterator[LoadedModel]:
    loaded = LoadedModel(SMOLLM2, gpu_layers=0)
    yield loaded
    loaded.close()


def test_a_grammar_that_parses_compiles(model: LoadedModel) -> None:
    model.check_grammar(JSON_OBJECT_GBNF)


@pytest.mark.parametrize("grammar", [
    'root ::= "a" (',  # syntax error
    "root ::= missing",  # undefined rule
    'root ::= "\\q"',  # bad escape
])
def test_a_grammar_that_does_not_parse_is_a_400(model: LoadedModel, grammar: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        model.check_grammar(grammar)
    assert raised.value.status == 400
