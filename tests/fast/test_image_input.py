"""Image input over fakes: chat ``image_url`` and Responses ``input_image`` parts reach the
engine as ``ImageInput``s at their offsets, and every bound is a 400 (413 for bytes) naming
the part's field and stating the bound, before anything is decoded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from appliance.api.bounds import RequestBounds
from appliance.api.wire.image_input import max_encoded_chars
from appliance.engines.base import ImageInput
from appliance.engines.llm.pictures import decode_picture
from appliance.errors import InvalidRequest
from tests.fakes import IMAGE_TOKENS, FakeVisionEngine
from tests.fast.responses_stack import responses_stack
from tests.fast.vision_stack import (
    TEXT_ONLY,
    VISION,
    chat_body,
    data_url,
    error_of,
    image_part,
    padded_png,
    picture,
    png_declaring,
    user_turn,
    vision_stack,
)
from tests.openapi_contract import validate

pytestmark = pytest.mark.anyio
RED = data_url(picture(40, 30))
BLUE = data_url(picture(8, 6, colour=(0, 0, 255)))


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


async def test_pictures_reach_the_engine_at_their_offsets() -> None:
    async with vision_stack() as stack:
        completion = await stack.client.chat.completions.create(
            model=VISION, max_tokens=16, messages=[user_turn(
                text("ab"), image_part(RED, "low"), text("cde"), image_part(BLUE))])
        assert completion.choices[0].message.content == "40x30:low@2 8x6:auto@5"
        [call] = stack.vision.calls
        [message] = call.messages
        assert message.content == "abcde"
        assert [offset for offset, _ in message.images] == [2, 5]
        assert message.images[0][1].data == picture(40, 30)
        usage = completion.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.image_tokens == 2 * IMAGE_TOKENS
        assert usage.prompt_tokens == 1 + 1 + 2 * IMAGE_TOKENS  # one word, one message
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn(text("x"), image_part(RED))))
        validate(response.json(), "CreateChatCompletionResponse")


async def test_a_streamed_image_request_completes_with_usage() -> None:
    async with vision_stack() as stack:
        stream = await stack.client.chat.completions.create(
            model=VISION, max_tokens=16, stream=True, stream_options={"include_usage": True},
            messages=[user_turn(text("what is this?"), image_part(RED, "high"))])
        chunks = [chunk async for chunk in stream]
        words = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert words == "40x30:high@13"
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.image_tokens == IMAGE_TOKENS


async def test_text_only_usage_says_no_image_tokens() -> None:
    async with vision_stack() as stack:
        response = await stack.post("/v1/chat/completions",
                                    chat_body({"role": "user", "content": "hi"}))
        assert "image_tokens" not in response.json()["usage"]["prompt_tokens_details"]


@pytest.mark.parametrize(("image_format", "media_type"), [
    ("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("GIF", "image/gif"),
    ("JPEG", "image/png"),  # mislabelled: the bytes decide
])
async def test_the_four_formats_are_read(image_format: str, media_type: str) -> None:
    async with vision_stack() as stack:
        url = data_url(picture(12, 10, image_format), media_type)
        response = await stack.post("/v1/chat/completions",
                                    chat_body(user_turn(image_part(url))))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "12x10:auto@0"


URL_PARAM = "messages[0].content[0].image_url.url"


@pytest.mark.parametrize(("url", "code", "says"), [
    (data_url(picture(4, 4, "BMP"), "image/bmp"), "invalid_image_format", "PNG, JPEG, WebP"),
    (data_url(picture(4, 4, "BMP")), "invalid_image_format", "PNG, JPEG, WebP or GIF"),
    (data_url(b"not a picture at all"), "invalid_image_format", "PNG, JPEG, WebP or GIF"),
    ("data:image/png;base64,iVBOR w0KGgo=", "invalid_image", "not valid base64"),
    ("data:image/png;base64,iVBORw0KGgo", "invalid_image", "not valid base64"),
    ("data:image/png,rawbytes", "invalid_value", "base64 data URL"),
    ("ftp://example.com/a.png", "invalid_value", "data URL"),
])
async def test_what_is_no_readable_picture_is_refused(url: str, code: str, says: str) -> None:
    async with vision_stack() as stack:
        response = await stack.post("/v1/chat/completions",
                                    chat_body(user_turn(image_part(url))))
        error = error_of(response)
        assert response.status_code == 400
        assert (error["param"], error["code"]) == (URL_PARAM, code)
        assert says in error["message"]


async def test_detail_values() -> None:
    async with vision_stack() as stack:
        for detail in ("low", "high", "auto"):
            response = await stack.post("/v1/chat/completions",
                                        chat_body(user_turn(image_part(RED, detail))))
            assert response.json()["choices"][0]["message"]["content"] == f"40x30:{detail}@0"
        response = await stack.post("/v1/chat/completions",
                                    chat_body(user_turn(image_part(RED, "medium"))))
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == "messages[0].content[0].image_url.detail"
        assert "'low', 'high' and 'auto'" in error["message"]


async def test_bytes_per_image_bounded_before_decoding() -> None:
    bounds = replace(RequestBounds(), max_image_bytes=3001)
    async with vision_stack(bounds) as stack:
        at_bound = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(data_url(padded_png(3001))))))
        assert at_bound.status_code == 200, at_bound.text
        # Past the encoded length of 3001 bytes: refused before decoding.
        over = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(data_url(padded_png(3004))))))
        error = error_of(over)
        assert over.status_code == 413
        assert error["param"] == URL_PARAM and "at most 3001 bytes" in error["message"]
        assert "base64" in error["message"]
        # One byte over, where base64 padding leaves the encoded length at the bound: the
        # decoded size is checked as well.
        assert max_encoded_chars(3001) == max_encoded_chars(3002)
        just_over = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(data_url(padded_png(3002))))))
        error = error_of(just_over)
        assert just_over.status_code == 413
        assert error["param"] == URL_PARAM and "is 3002 bytes" in error["message"]


async def test_a_max_size_picture_fits_the_default_json_body() -> None:
    bounds = RequestBounds()
    async with vision_stack(bounds) as stack:
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn(text("describe"), image_part(data_url(padded_png(
                bounds.max_image_bytes))))))
        assert response.status_code == 200, response.text[:300]
        assert response.json()["choices"][0]["message"]["content"] == "4x4:auto@8"


@pytest.mark.parametrize(("width", "height"), [(60000, 60000), (5000, 5000), (1, 16_777_217)])
async def test_pixels_per_image_bounded_from_the_header(width: int, height: int) -> None:
    async with vision_stack() as stack:
        bomb = data_url(png_declaring(width, height))
        assert len(bomb) < 200  # what makes it a bomb: a few bytes declaring gigapixels
        response = await stack.post("/v1/chat/completions",
                                    chat_body(user_turn(image_part(bomb))))
        error = error_of(response)
        assert response.status_code == 400
        assert (error["param"], error["code"]) == (URL_PARAM, "image_too_large")
        assert f"at most {RequestBounds().max_image_pixels}" in error["message"]
        assert stack.vision.calls == []


async def test_images_per_request_bounded_across_messages() -> None:
    bounds = replace(RequestBounds(), max_images=2)
    async with vision_stack(bounds) as stack:
        body = chat_body(user_turn(image_part(RED)), {"role": "assistant", "content": "ok"},
                         user_turn(text("and"), image_part(RED), image_part(BLUE)))
        response = await stack.post("/v1/chat/completions", body)
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == "messages[2].content[2]"
        assert "at most 2" in error["message"]


async def test_pixels_per_request_bounded() -> None:
    bounds = replace(RequestBounds(), max_request_image_pixels=40 * 30 * 2 + 10)
    async with vision_stack(bounds) as stack:
        two = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(RED), image_part(RED, "low"))))
        assert two.status_code == 200, two.text
        three = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(RED)), {"role": "assistant", "content": "ok"},
            user_turn(image_part(RED), image_part(RED))))  # the same picture counts each time
        error = error_of(three)
        assert three.status_code == 400
        assert error["param"] == "messages[2].content[1]" and "at most 2410" in error["message"]


@pytest.mark.parametrize("role", ["system", "developer", "assistant", "tool"])
async def test_images_only_in_user_turns(role: str) -> None:
    async with vision_stack() as stack:
        message: dict[str, Any] = {"role": role, "content": [text("x"), image_part(RED)]}
        if role == "tool":
            message["tool_call_id"] = "call_1"
        response = await stack.post("/v1/chat/completions", chat_body(
            message, {"role": "user", "content": "hi"}))
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == "messages[0].content[1]"
        assert "only supported in user messages" in error["message"]


async def test_a_model_without_a_projector_refuses_the_part() -> None:
    async with vision_stack() as stack:
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn(text("look"), image_part(RED)), model=TEXT_ONLY))
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == "messages[0].content[1]"
        assert "does not take images" in error["message"]


async def test_remote_urls_are_off_by_default() -> None:
    async with vision_stack() as stack:
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part("http://192.168.1.1/router.png"))))
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == URL_PARAM
        assert "remote_image_hosts" in error["message"]


async def test_url_schemes_are_read_without_case() -> None:
    async with vision_stack() as stack:
        upper = "DATA:" + RED.removeprefix("data:")
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn(image_part(upper))))
        assert response.json()["choices"][0]["message"]["content"] == "40x30:auto@0"
        for remote in ("HTTP://192.168.1.1/router.png", "Https://192.168.1.1/router.png"):
            response = await stack.post("/v1/chat/completions", chat_body(
                user_turn(image_part(remote))))
            error = error_of(response)
            assert error["param"] == URL_PARAM and "remote_image_hosts" in error["message"]


async def test_each_picture_reaches_the_engine_naming_its_part(tmp_path: Path) -> None:
    async with vision_stack() as stack:
        await stack.post("/v1/chat/completions", chat_body(
            user_turn(text("a"), image_part(RED)), user_turn(image_part(BLUE), text("b"))))
        [call] = stack.vision.calls
        assert [image.param for message in call.messages for _, image in message.images] == [
            "messages[0].content[1].image_url.url", "messages[1].content[0].image_url.url"]
    engine = FakeVisionEngine(model_id="fake-chat")
    async with responses_stack(tmp_path, engine=engine) as stack:
        await stack.client.responses.create(model="gpt-4o-mini", input=[{
            "role": "user", "content": [{"type": "input_text", "text": "what?"},
                                        input_image(RED)]}])
        [message] = engine.calls[-1].messages
        assert message.images[0][1].param == "input[0].content[1].image_url"


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_a_picture_that_fails_to_decode_names_its_part(image_format: str) -> None:
    # A truncated file passes the api's header check; the engine's decode refuses it.
    whole = picture(256, 256, image_format)
    truncated = ImageInput(whole[:len(whole) // 2], 256, 256,
                           param="messages[0].content[1].image_url.url")
    with pytest.raises(InvalidRequest) as refused:
        decode_picture(truncated)
    assert refused.value.param == "messages[0].content[1].image_url.url"
    assert refused.value.code == "invalid_image"


async def test_missing_url_and_bare_string_image_url() -> None:
    async with vision_stack() as stack:
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn({"type": "image_url", "image_url": {"detail": "low"}})))
        assert response.status_code == 400 and error_of(response)["param"] == URL_PARAM
        response = await stack.post("/v1/chat/completions", chat_body(
            user_turn({"type": "image_url", "image_url": RED})))
        assert response.json()["choices"][0]["message"]["content"] == "40x30:auto@0"


async def test_models_say_which_take_images() -> None:
    async with vision_stack() as stack:
        listing = await stack.client.models.list()
        modalities = {m.id: getattr(m, "input_modalities", None) for m in listing.data}
        assert modalities == {VISION: ["text", "image"], "fake-vision": ["text", "image"],
                              TEXT_ONLY: ["text"], "fake-chat": ["text"]}
        one = await stack.http.get(f"/v1/models/{VISION}",
                                   headers={"authorization": "Bearer sk-app-vision-key-0123456789"})
        validate(one.json(), "Model")
        assert one.json()["input_modalities"] == ["text", "image"]


def input_image(url: str, detail: str = "auto", **more: Any) -> dict[str, Any]:
    return {"type": "input_image", "image_url": url, "detail": detail, **more}


async def test_responses_input_image(tmp_path: Path) -> None:
    engine = FakeVisionEngine(model_id="fake-chat")
    async with responses_stack(tmp_path, engine=engine) as stack:
        response = await stack.client.responses.create(model="gpt-4o-mini", input=[{
            "role": "user", "content": [{"type": "input_text", "text": "what?"},
                                        input_image(RED, "low")]}])
        assert response.output_text == "40x30:low@5"
        assert response.usage is not None
        assert response.usage.input_tokens == 1 + 1 + IMAGE_TOKENS
        # A second turn about the same picture: the engine sees it again, equal bytes.
        again = await stack.client.responses.create(
            model="gpt-4o-mini", previous_response_id=response.id,
            input=[{"role": "user", "content": [{"type": "input_text", "text": "sure?"}]}])
        assert again.output_text == engine.reply  # the last user turn has no picture
        assert again.usage is not None and again.usage.input_tokens > IMAGE_TOKENS
        first, _, last = engine.calls[-1].messages
        assert first.images[0][1].data == engine.calls[0].messages[0].images[0][1].data
        assert last.images == ()
        items = await stack.client.responses.input_items.list(response.id)
        assert items.data[0].content[1].type == "input_image"  # type: ignore[union-attr]


@pytest.mark.parametrize(("part", "param", "says"), [
    (input_image("", file_id="file-abc"), "input[0].content[0].file_id", "no Files API"),
    (input_image(RED, "huge"), "input[0].content[0].detail", "'low', 'high' and 'auto'"),
    (input_image(data_url(png_declaring(60000, 60000))), "input[0].content[0].image_url",
     "pixels"),
    ({"type": "input_image"}, "input[0].content[0].image_url", "Missing required"),
])
async def test_responses_refusals_name_the_part(tmp_path: Path, part: dict[str, Any],
                                                param: str, says: str) -> None:
    async with responses_stack(tmp_path, engine=FakeVisionEngine(model_id="fake-chat")) as stack:
        response = await stack.http.post("/v1/responses", headers=stack.auth(), json={
            "model": "gpt-4o-mini", "input": [{"role": "user", "content": [part]}]})
        error = error_of(response)
        assert response.status_code == 400
        assert error["param"] == param and says in error["message"]


async def test_responses_images_only_from_the_user_and_for_vision_models(
        tmp_path: Path) -> None:
    async with responses_stack(tmp_path) as stack:  # a text-only model
        body = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "hi"}, input_image(RED)]}]}
        response = await stack.http.post("/v1/responses", headers=stack.auth(), json=body)
        assert response.status_code == 400
        assert error_of(response)["param"] == "input[0].content[1]"
        counted = await stack.http.post("/v1/responses/input_tokens", headers=stack.auth(),
                                        json=body)
        assert counted.status_code == 400
    async with responses_stack(tmp_path / "v", engine=FakeVisionEngine(model_id="fake-chat")
                               ) as stack:
        response = await stack.http.post("/v1/responses", headers=stack.auth(), json={
            "model": "gpt-4o-mini", "input": [{"role": "developer", "content": [
                input_image(RED)]}, {"role": "user", "content": "hi"}]})
        assert response.status_code == 400
        assert error_of(response)["param"] == "input[0].content[0]"
        counted = await stack.http.post("/v1/responses/input_tokens", headers=stack.auth(),
                                        json={"model": "gpt-4o-mini", "input": [
                                            {"role": "user", "content": [input_image(RED)]}]})
        assert counted.json()["input_tokens"] == 1 + IMAGE_TOKENS
