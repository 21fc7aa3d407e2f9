"""Legacy completions on the real SmolLM2: the raw prompt, no chat template."""

from __future__ import annotations

import openai
import pytest

from tests.real.conftest import RealServer

pytestmark = pytest.mark.real
SMOL = "smollm2-135m-instruct"


def sdk(server: RealServer) -> openai.OpenAI:
    return server.sdk


def test_raw_prompt_completes_and_echoes(real_server: RealServer) -> None:
    prompt = "The capital of France is"
    completion = sdk(real_server).completions.create(model=SMOL, prompt=prompt,
                                                     temperature=0, max_tokens=4, echo=True)
    text = completion.choices[0].text
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert completion.usage is not None and completion.usage.completion_tokens <= 4
    # No chat template: the prompt is counted as is (a handful of tokens, not a whole turn).
    assert completion.usage.prompt_tokens < 10


def test_stream_equals_non_stream_for_several_prompts(real_server: RealServer) -> None:
    prompts = ["Once upon a time", "The best way to cook rice is"]
    whole = sdk(real_server).completions.create(model=SMOL, prompt=prompts, temperature=0,
                                                max_tokens=12)
    texts = {0: "", 1: ""}
    usage = None
    for chunk in sdk(real_server).completions.create(
            model=SMOL, prompt=prompts, temperature=0, max_tokens=12, stream=True,
            stream_options={"include_usage": True}):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
        usage = chunk.usage or usage
    assert texts == {c.index: c.text for c in whole.choices}
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_suffix_is_refused_by_name(real_server: RealServer) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(real_server).completions.create(model=SMOL, prompt="def f(", suffix="return x")
    assert caught.value.param == "suffix"


def test_sixteen_prompts_times_n_past_the_queue_limit_are_served(
        real_server: RealServer) -> None:
    # 16 prompts x 5 choices (80) is more than queue_limit (64): inside every bound, so an
    # idle server serves it (it was a 503 on every retry when each prompt's admission found
    # the earlier prompts' choices queued).
    completion = sdk(real_server).completions.create(model=SMOL, prompt=["a"] * 16, n=5,
                                                     max_tokens=1)
    assert sorted(c.index for c in completion.choices) == list(range(80))
