"""Chat templates render in the sandbox; a template's own refusal is a 400, not a 500."""

from __future__ import annotations

import pytest

from appliance.config import load_config
from appliance.engines.base import ChatMessage
from appliance.engines.llm.templates import ChatTemplate
from appliance.errors import ConfigError, InvalidRequest
from tests.fast.test_config import ROOT

CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chatml_renders_with_generation_prompt() -> None:
    template = ChatTemplate(CHATML, "<s>", "</s>", "m")
    text = template.render([ChatMessage("system", "S"), ChatMessage("user", "U")])
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n" \
                   "<|im_start|>assistant\n"


def test_raise_exception_in_template_is_invalid_request() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", "", "", "m")
    with pytest.raises(InvalidRequest) as caught:
        template.render([ChatMessage("user", "x")])
    assert "roles must alternate" in caught.value.message
    assert caught.value.param == "messages"


def test_sandbox_blocks_attribute_escapes() -> None:
    template = ChatTemplate("{{ messages.__class__.__mro__ }}", "", "", "m")
    with pytest.raises(InvalidRequest):
        template.render([ChatMessage("user", "x")])


def test_broken_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ChatTemplate("{% for %}", "", "", "m")


def test_shipped_gemma_template_folds_system_into_first_user_turn() -> None:
    gemma = load_config(ROOT / "models.toml", env={}).models[2]
    assert gemma.chat_template is not None
    template = ChatTemplate(gemma.chat_template, "<bos>", "<eos>", gemma.id)
    text = template.render([ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"),
                            ChatMessage("assistant", "Hello!"), ChatMessage("user", "Bye")])
    assert text == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
