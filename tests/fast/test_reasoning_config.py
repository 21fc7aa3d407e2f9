"""models.toml's reasoning keys: reasoning, reasoning_tags, reasoning_budget; each mistake is
named by its key, budgets are bounded by context_length."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config import ChatModelConfig, load_config
from appliance.errors import ConfigError


def chat_model(tmp_path: Path, keys: str, context_length: int = 1024) -> ChatModelConfig:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text(f'[[models]]\nid = "r"\npath = "m.gguf"\ncontext_length = {context_length}\n'
                    f"{keys}\n", encoding="utf-8")
    model = load_config(path).models[0]
    assert isinstance(model, ChatModelConfig)
    return model


def test_defaults_are_auto_think_tags_and_budgets_within_the_context(tmp_path: Path) -> None:
    model = chat_model(tmp_path, "", context_length=4096)
    assert model.reasoning == "auto"
    assert model.reasoning_tags == ("<think>", "</think>")
    # the high default (8192) is more than this context holds: it is the context
    assert dict(model.reasoning_budget) == {"low": 512, "medium": 2048, "high": 4096}


def test_keys_are_read(tmp_path: Path) -> None:
    model = chat_model(tmp_path, 'reasoning = "think"\nreasoning_tags = ["<seed:think>", '
                       '"</seed:think>"]\nreasoning_budget = { low = 8, high = 64 }')
    assert model.reasoning == "think"
    assert model.reasoning_tags == ("<seed:think>", "</seed:think>")
    assert dict(model.reasoning_budget) == {"low": 8, "medium": 1024, "high": 64}
    assert dict(chat_model(tmp_path, 'reasoning = "harmony"').reasoning_budget)["low"] == 512


@pytest.mark.parametrize(("keys", "named"), [
    ('reasoning = "deepseek"', "reasoning: 'deepseek' is not one of auto, none, think, harmony"),
    ("reasoning = true", "reasoning: expected str"),
    ('reasoning_tags = ["<think>"]', "reasoning_tags: expected two different"),
    ('reasoning_tags = ["<t>", "<t>"]', "reasoning_tags: expected two different"),
    ('reasoning_tags = ["<t>", ""]', "reasoning_tags: expected two different"),
    ("reasoning_budget = { huge = 5 }", "reasoning_budget: 'huge' is not one of low, medium"),
    ("reasoning_budget = { low = -1 }", r"reasoning_budget: low = -1: expected a number of "
     r"tokens from 0 to context_length \(1024\)"),
    ("reasoning_budget = { high = 1025 }", "reasoning_budget: high = 1025"),
    ('reasoning_budget = { low = "8" }', "reasoning_budget: low = '8'"),
    ("reasoning_budget = 8", "reasoning_budget: expected dict"),
])
def test_mistakes_name_the_key(tmp_path: Path, keys: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        chat_model(tmp_path, keys)


def test_reasoning_keys_are_for_chat_models_only(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    path = tmp_path / "models.toml"
    path.write_text('[[models]]\nid = "e"\nkind = "embedding"\npath = "m.gguf"\n'
                    'reasoning = "think"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="reasoning: applies only to models of kind chat"):
        load_config(path)
