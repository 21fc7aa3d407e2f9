"""Vision input on the real engine, in-process: SmolLM2-135M with the tiny random projector
(scripts/build_tiny_mmproj.py). The answers are nonsense; what is checked is the path: a
picture is a run of placeholders keyed by its content, it changes what the model says, its KV
is reused by a second turn, it is evaluated inside the batching scheduler while streams keep
getting a token every step, and every libmtmd chunk is freed, however a request ends.
"""

from __future__ import annotations

import asyncio
import ctypes
import io
import random
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import llama_cpp
import pytest
from llama_cpp import mtmd_cpp
from PIL import Image

from appliance.config import ChatModelConfig
from appliance.engines.base import (
    CancelToken,
    ChatEvent,
    ChatMessage,
    ChatParams,
    Finish,
    ImageInput,
    Sampling,
    TextDelta,
    Usage,
)
from appliance.engines.llm.engine import LlamaChatEngine
from appliance.engines.llm.model import LoadedModel
from appliance.engines.llm.pictures import decode_picture
from appliance.engines.llm.prompt_images import index_in_run, is_placeholder
from appliance.engines.llm.scheduler import StepReport
from appliance.engines.llm.vision import Projector
from appliance.errors import ContextLengthExceeded, InvalidRequest
from devtools.server_harness import ROOT, SMOLLM2, TINY_MMPROJ, build_tiny_mmproj

pytestmark = pytest.mark.real

IMAGE_TOKENS = 16  # the fixture: 32 px pictures in patches of 8
GREEDY = Sampling(temperature=0.0)


def png(seed: int, size: tuple[int, int] = (48, 40)) -> ImageInput:
    """A PNG of seeded noise: every seed a different picture."""
    rng = random.Random(seed)
    picture = Image.new("RGB", size)
    picture.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                     for _ in range(size[0] * size[1])])
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return ImageInput(out.getvalue(), *size)


def asking(image: ImageInput | None, text: str = "What is in this picture?",
           max_tokens: int = 12) -> ChatParams:
    images = () if image is None else ((0, image),)
    return ChatParams(messages=(ChatMessage("user", text, images=images),),
                      max_tokens=max_tokens, sampling=GREEDY)


@pytest.fixture(scope="module")
def steps() -> list[StepReport]:
    return []


@pytest.fixture(scope="module")
def engine(steps: list[StepReport]) -> Iterator[LlamaChatEngine]:
    build_tiny_mmproj()
    config = ChatModelConfig(id="smollm2-vision", path=SMOLLM2, mmproj=TINY_MMPROJ,
                             context_length=2048, parallel=4)
    loaded = LlamaChatEngine.load(config, on_step=steps.append)
    try:
        loaded.warm_up()
        yield loaded
    finally:
        loaded.close()


async def collect(events: AsyncIterator[ChatEvent]) -> tuple[str, Usage]:
    text, usage = "", None
    async for event in events:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, Finish):
            usage = event.usage
    assert usage is not None
    return text, usage


def run(engine: LlamaChatEngine, params: ChatParams) -> tuple[str, Usage]:
    return asyncio.run(collect(engine.chat(params, CancelToken())))


def test_a_picture_is_a_run_of_placeholders_and_equal_pictures_give_equal_runs() -> None:
    build_tiny_mmproj()
    model = LoadedModel(SMOLLM2, 0)
    projector = Projector(TINY_MMPROJ, model, use_gpu=False, threads=2, batch_size=512,
                          model_id="probe")
    try:
        first = projector.tokenize(decode_picture(png(1)))
        again = projector.tokenize(decode_picture(png(1)))
        other = projector.tokenize(decode_picture(png(2)))
        # Re-encoded at another size, the same pixels are no longer the same picture.
        assert first.tokens == again.tokens
        assert len(first.tokens) == IMAGE_TOKENS and len(first.runs) == 1
        assert all(is_placeholder(token) for token in first.tokens)
        assert [index_in_run(token) for token in first.tokens] == list(range(IMAGE_TOKENS))
        assert first.runs[0][0] == 0 and first.runs[0][1].tokens == IMAGE_TOKENS
        assert not set(first.tokens) & set(other.tokens)
        assert projector.live_chunks == 3
        for made in (first, again, other):
            made.close()
        first.close()  # twice: freed once
        assert projector.live_chunks == 0
    finally:
        projector.close()
        model.close()


def test_the_model_says_it_takes_images_and_counts_their_tokens(
        engine: LlamaChatEngine) -> None:
    assert engine.info.vision
    without = asyncio.run(engine.count_tokens(asking(None), CancelToken()))
    with_one = asyncio.run(engine.count_tokens(asking(png(3)), CancelToken()))
    two = ChatParams(messages=(ChatMessage("user", "Compare these.",
                                           images=((0, png(3)), (14, png(4)))),))
    with_two = asyncio.run(engine.count_tokens(two, CancelToken()))
    plain_two = asyncio.run(engine.count_tokens(replace(two, messages=(
        ChatMessage("user", "Compare these."),)), CancelToken()))
    assert with_one == without + IMAGE_TOKENS
    assert with_two == plain_two + 2 * IMAGE_TOKENS
    assert engine.live_image_chunks == 0


def test_two_pictures_give_different_answers_at_temperature_0(engine: LlamaChatEngine) -> None:
    first, usage = run(engine, asking(png(10)))
    repeat, _ = run(engine, asking(png(10)))
    second, _ = run(engine, asking(png(11)))
    assert first == repeat
    assert first != second
    text_only = asyncio.run(engine.count_tokens(asking(None), CancelToken()))
    assert usage.image_tokens == IMAGE_TOKENS
    assert usage.prompt_tokens == text_only + IMAGE_TOKENS
    assert engine.live_image_chunks == 0


def test_a_second_turn_on_the_same_picture_reuses_its_kv(
        engine: LlamaChatEngine, steps: list[StepReport]) -> None:
    picture = png(20)
    question = asking(picture, "Describe it.", max_tokens=8)
    answer, first = run(engine, question)
    steps.clear()
    follow_up = replace(question, messages=(
        *question.messages, ChatMessage("assistant", answer),
        ChatMessage("user", "And what colour is it?")))
    _, second = run(engine, follow_up)
    # The first turn's prompt, picture included, came from the slot's cache.
    assert second.cached_tokens >= first.prompt_tokens - 1
    assert second.image_tokens == IMAGE_TOKENS
    assert sum(step.image_tokens for step in steps) == 0  # the picture was not evaluated again
    steps.clear()
    # The same words about another picture reuse only what comes before the picture.
    other = replace(question, messages=(
        ChatMessage("user", "Describe it.", images=((0, png(21)),)),))
    _, third = run(engine, other)
    assert third.cached_tokens < first.prompt_tokens - IMAGE_TOKENS
    assert sum(step.image_tokens for step in steps) == IMAGE_TOKENS
    assert engine.live_image_chunks == 0


def test_pictures_are_evaluated_between_steps_while_streams_keep_flowing(
        engine: LlamaChatEngine, steps: list[StepReport]) -> None:
    # The story cannot end early (its end-of-turn tokens are banned): it streams through
    # every step the others take.
    vocabulary = LoadedModel(SMOLLM2, 0, vocab_only=True)
    try:
        ends = vocabulary.single_tokens(("<|im_end|>", "<|endoftext|>"))
    finally:
        vocabulary.close()
    story = ChatParams(messages=(ChatMessage("user", "Tell a long story about a fox."),),
                       max_tokens=160, sampling=replace(GREEDY, logit_bias=tuple(
                           (token, -100.0) for token in sorted(ends))))
    story_steps = 0  # steps taken until the story's last token

    async def scenario() -> tuple[int, str, list[tuple[str, Usage]]]:
        nonlocal story_steps
        stream = engine.chat(story, CancelToken())
        produced = 0
        reason = ""
        async for event in stream:
            if isinstance(event, TextDelta):
                produced += 1
                if produced == 3:
                    break
        steps.clear()
        others = [asyncio.ensure_future(collect(engine.chat(params, CancelToken())))
                  for params in (
                      asking(png(30), "Two pictures: what differs?", max_tokens=6),
                      asking(None, "Name a fruit.", max_tokens=6),
                      asking(png(31), max_tokens=6),
                      asking(None, "Name a colour.", max_tokens=6),
                      asking(png(32), max_tokens=6),
                      asking(None, "Name a tree.", max_tokens=6),
                      asking(png(33), max_tokens=6))]
        async for event in stream:
            if isinstance(event, TextDelta):
                produced += 1
            elif isinstance(event, Finish):
                reason = f"{event.reason}:{event.usage.completion_tokens}"
                story_steps = len(steps)
        return produced, reason, list(await asyncio.gather(*others))

    produced, reason, results = asyncio.run(scenario())
    assert len(results) == 7
    assert [usage.image_tokens for _, usage in results] == [IMAGE_TOKENS, 0] * 3 + [
        IMAGE_TOKENS]
    assert all(usage.completion_tokens >= 1 for _, usage in results)
    pictured = [step for step in steps if step.image_tokens]
    assert sum(step.image_tokens for step in pictured) == 4 * IMAGE_TOKENS
    assert all(step.image_tokens == IMAGE_TOKENS for step in pictured)  # one a step
    assert reason == "length:160" and produced > 3
    assert all(usage.completion_tokens for _, usage in results)
    # Every step while the story ran, pictures' steps included, gave the story its token.
    assert pictured and all(step.generating >= 1 for step in steps[:story_steps])
    assert all(step in steps[:story_steps] for step in pictured)
    assert engine.live_image_chunks == 0


def test_no_chunk_outlives_its_request_however_it_ends(engine: LlamaChatEngine) -> None:
    async def cancelled_mid_stream(seed: int) -> None:
        cancel = CancelToken()
        events = engine.chat(asking(png(seed), max_tokens=40), cancel)
        async for event in events:
            if isinstance(event, TextDelta):
                break
        await events.aclose()  # the client left: the slot frees at the next step

    async def cancelled_while_preparing(seed: int) -> None:
        task = asyncio.ensure_future(collect(engine.chat(asking(png(seed)), CancelToken())))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for round_ in range(6):
        run(engine, asking(png(100 + round_), max_tokens=3))
        asyncio.run(cancelled_mid_stream(200 + round_))
        asyncio.run(cancelled_while_preparing(300 + round_))
        with pytest.raises(ContextLengthExceeded):
            run(engine, asking(png(400 + round_), max_tokens=2040))
        two_choices = replace(asking(png(500 + round_), max_tokens=3), n=2)
        run(engine, two_choices)
        _wait_for(lambda: engine.live_image_chunks == 0)
    assert engine.live_image_chunks == 0


def test_images_in_a_turn_other_than_the_user_s_are_refused(engine: LlamaChatEngine) -> None:
    params = ChatParams(messages=(ChatMessage("user", "Hi"),
                                  ChatMessage("assistant", "Look", images=((0, png(7)),)),
                                  ChatMessage("user", "Well?")), max_tokens=3)
    with pytest.raises(InvalidRequest) as refused:
        run(engine, params)
    assert refused.value.param == "messages[1].content"


def test_a_model_without_a_projector_refuses_images() -> None:
    config = ChatModelConfig(id="smol-text", path=SMOLLM2, context_length=512, parallel=1)
    text_only = LlamaChatEngine.load(config)
    try:
        assert not text_only.info.vision
        with pytest.raises(InvalidRequest) as refused:
            run(text_only, asking(png(8)))
        assert refused.value.param == "messages[0].content"
    finally:
        text_only.close()


def _wait_for(condition: object, attempts: int = 200) -> None:
    """The decode thread frees a cancelled request's chunks at its next step: polled, as
    many times as it takes within a bound (never a timing assertion)."""
    import time

    for _ in range(attempts):
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)


# The libmtmd functions vision.py calls, as mtmd.h / mtmd-helper.h declare them in the pinned
# llama-cpp-python (0.3.36): a changed signature fails here, naming the function, rather than
# as a crash in the decode thread (tests/fast/test_llama_bindings.py pins llama.h's the same
# way). Kept here, beside the only module that calls them.
_i32, _size, _ptr = ctypes.c_int32, ctypes.c_size_t, ctypes.c_void_p
MTMD_FUNCTIONS: dict[str, tuple[list[Any], Any]] = {
    "mtmd_bitmap_free": ([_ptr], None),
    "mtmd_bitmap_init": ([ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint8)],
                         _ptr),
    "mtmd_context_params_default": ([], mtmd_cpp.mtmd_context_params),
    "mtmd_decode_use_mrope": ([_ptr], ctypes.c_bool),
    "mtmd_decode_use_non_causal": ([_ptr, _ptr], ctypes.c_bool),
    "mtmd_default_marker": ([], ctypes.c_char_p),
    "mtmd_free": ([_ptr], None),
    "mtmd_get_cap_from_file": ([ctypes.c_char_p], mtmd_cpp.mtmd_caps),
    "mtmd_helper_eval_chunk_single": ([_ptr, _ptr, _ptr, _i32, _i32, ctypes.c_int,
                                       ctypes.c_bool, ctypes.POINTER(_i32)], ctypes.c_int),
    "mtmd_helper_log_set": ([llama_cpp.llama_log_callback, _ptr], None),
    "mtmd_init_from_file": ([ctypes.c_char_p, _ptr, mtmd_cpp.mtmd_context_params], _ptr),
    "mtmd_input_chunk_copy": ([_ptr], _ptr),
    "mtmd_input_chunk_free": ([_ptr], None),
    "mtmd_input_chunk_get_n_pos": ([_ptr], _i32),
    "mtmd_input_chunk_get_n_tokens": ([_ptr], _size),
    "mtmd_input_chunk_get_tokens_text": ([_ptr, ctypes.POINTER(_size)],
                                         ctypes.POINTER(_i32)),
    "mtmd_input_chunk_get_type": ([_ptr], ctypes.c_int),
    "mtmd_input_chunks_free": ([_ptr], None),
    "mtmd_input_chunks_get": ([_ptr, _size], _ptr),
    "mtmd_input_chunks_init": ([], _ptr),
    "mtmd_input_chunks_size": ([_ptr], _size),
    "mtmd_log_set": ([llama_cpp.llama_log_callback, _ptr], None),
    "mtmd_tokenize": ([_ptr, _ptr, ctypes.POINTER(mtmd_cpp.mtmd_input_text),
                       ctypes.POINTER(_ptr), _size], ctypes.c_int),
}
MTMD_STRUCTS: dict[str, list[tuple[str, Any]]] = {
    "mtmd_input_text": [("text", ctypes.c_char_p), ("text_len", _size),
                        ("add_special", ctypes.c_bool), ("parse_special", ctypes.c_bool)],
    "mtmd_caps": [("inp_vision", ctypes.c_bool), ("inp_audio", ctypes.c_bool)],
}


def test_every_libmtmd_function_the_projector_calls_has_its_pinned_signature() -> None:
    source = (ROOT / "appliance" / "engines" / "llm" / "vision.py").read_text()
    used = set(re.findall(r"\bmtmd_cpp\.(mtmd_\w+)", source))
    functions = {name for name in used if callable(getattr(mtmd_cpp, name))
                 and hasattr(getattr(mtmd_cpp, name), "argtypes")}
    assert functions == set(MTMD_FUNCTIONS), "pin the signatures of what vision.py calls"
    for name, (argtypes, restype) in MTMD_FUNCTIONS.items():
        function = getattr(mtmd_cpp, name)
        assert [_kind(t) for t in function.argtypes] == [_kind(t) for t in argtypes], name
        assert _kind(function.restype) == _kind(restype), name
    for struct, fields in MTMD_STRUCTS.items():
        declared = getattr(mtmd_cpp, struct)._fields_
        assert all(field in declared for field in fields), struct
    set_fields = {"use_gpu", "n_threads", "print_timings", "warmup"}
    assert set_fields <= {name for name, _ in mtmd_cpp.mtmd_context_params._fields_}


def _kind(ctype: Any) -> str:
    """What a ctypes type is, by shape: pointers are pointers whatever they point to."""
    if ctype is None:
        return "void"
    if ctype is llama_cpp.llama_log_callback:
        return "log callback"
    if issubclass(ctype, ctypes.Structure):
        return ctype.__name__
    if issubclass(ctype, ctypes._Pointer) or ctype in (ctypes.c_void_p, ctypes.c_char_p):
        return f"pointer {ctypes.sizeof(ctype)}"
    return f"{ctype._type_}{ctypes.sizeof(ctype)}"


def test_pictures_are_decoded_upright_first_frame_rgb_and_low_detail_shrunk() -> None:
    # A JPEG 40x20 whose EXIF says "rotate 90° clockwise to view" (orientation 6).
    sideways = Image.new("RGB", (40, 20), (250, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    encoded = io.BytesIO()
    sideways.save(encoded, format="JPEG", exif=exif)
    upright = decode_picture(ImageInput(encoded.getvalue(), 40, 20))
    assert (upright.width, upright.height) == (20, 40)
    assert len(upright.rgb) == 20 * 40 * 3
    # A two-frame GIF with transparency: its first frame, in RGB.
    frames = [Image.new("P", (8, 8), 1), Image.new("P", (8, 8), 2)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:],
                   transparency=0)
    first = decode_picture(ImageInput(gif.getvalue(), 8, 8))
    with Image.open(io.BytesIO(gif.getvalue())) as opened:
        expected = opened.convert("RGB").tobytes()
    assert first.rgb == expected
    big = png(1, (1200, 600))
    low = decode_picture(replace(big, detail="low"))
    assert (low.width, low.height) == (512, 256)
    assert (decode_picture(big).width, decode_picture(replace(big, detail="high")).width) \
        == (1200, 1200)
    assert low.digest != decode_picture(big).digest


def test_a_picture_whose_header_lies_about_its_size_is_refused() -> None:
    real = png(2, (64, 64))
    with pytest.raises(InvalidRequest) as refused:
        decode_picture(replace(real, width=8, height=8))
    assert refused.value.param == "messages"
    with pytest.raises(InvalidRequest):
        decode_picture(ImageInput(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 8, 8))
