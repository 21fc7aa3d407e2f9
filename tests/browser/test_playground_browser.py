"""The playground in headless Chromium (Debian's chromium + chromium-driver, via Selenium)
against the real session server: chat streams and stops, a reasoning model's thinking shows
apart from its answer, a spoken WAV is transcribed, images
appear, and the usage view counts what the page just did. Screenshots go to
test-artifacts/browser/; the browser's console must stay free of errors."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from devtools.server_harness import ROOT
from tests.real.session_server import RealServer
from tests.real.speech import speak

pytestmark = pytest.mark.real
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium is missing: scripts/test installs it "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=375,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    # Headless windows are at least 500 px wide: emulate a 375 px phone screen instead.
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 375, "height": 900, "deviceScaleFactor": 1, "mobile": True})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(check: Callable[[], Any], timeout: float = 60.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        time.sleep(every)


def console_errors(chrome: webdriver.Chrome) -> list[dict[str, Any]]:
    return [e for e in chrome.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]


def shoot(chrome: webdriver.Chrome, name: str) -> None:
    chrome.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def by_id(chrome: webdriver.Chrome, element_id: str) -> Any:
    return chrome.find_element(By.ID, element_id)


@pytest.fixture(scope="module")
def page(browser: webdriver.Chrome, real_server: RealServer) -> webdriver.Chrome:
    browser.get(real_server.server.base_url + "/")
    by_id(browser, "key").send_keys(real_server.key)
    by_id(browser, "key").send_keys(Keys.ENTER)
    wait_for(lambda: "smollm2-135m-instruct" in by_id(browser, "chat-model").text)
    assert browser.execute_script("return sessionStorage.getItem('appliance.key')") \
        == real_server.key
    assert browser.execute_script("return localStorage.length") == 0
    return browser


def open_tab(chrome: webdriver.Chrome, name: str) -> None:
    by_id(chrome, f"tab-{name}").click()
    wait_for(lambda: by_id(chrome, f"panel-{name}").is_displayed())


def test_fits_a_phone_and_tabs_follow_the_keyboard(page: webdriver.Chrome) -> None:
    assert page.execute_script("return window.innerWidth") == 375
    width = page.execute_script("return document.documentElement.scrollWidth")
    assert width <= 375, f"the page scrolls sideways at 375 px ({width} px wide)"
    for element in page.find_elements(By.CSS_SELECTOR, "input, select, textarea"):
        element_id = element.get_attribute("id")
        assert page.find_elements(By.CSS_SELECTOR, f'label[for="{element_id}"]'), element_id
    by_id(page, "tab-chat").click()
    page.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert page.switch_to.active_element.get_attribute("id") == "tab-transcribe"
    assert by_id(page, "panel-transcribe").is_displayed()
    page.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    assert by_id(page, "panel-chat").is_displayed()
    page.switch_to.active_element.send_keys(Keys.TAB)  # from the tabs into the chat form
    assert page.switch_to.active_element.get_attribute("id") == "chat-model"
    shoot(page, "chat-375px")
    assert console_errors(page) == []


def start_chat(chrome: webdriver.Chrome, prompt: str, max_tokens: int) -> None:
    open_tab(chrome, "chat")
    Select(by_id(chrome, "chat-model")).select_by_value("smollm2-135m-instruct")
    by_id(chrome, "chat-max-tokens").clear()
    by_id(chrome, "chat-max-tokens").send_keys(str(max_tokens))
    by_id(chrome, "chat-prompt").clear()
    by_id(chrome, "chat-prompt").send_keys(prompt)
    by_id(chrome, "chat-send").click()


def test_chat_streams_into_the_page(page: webdriver.Chrome) -> None:
    start_chat(page, "Tell me about the sea in a few sentences.", 120)
    output = by_id(page, "chat-output")
    # Text shows while the stream is still open: it arrives piece by piece.
    wait_for(lambda: output.get_attribute("data-state") == "streaming" and output.text)
    wait_for(lambda: output.get_attribute("data-state") == "done")
    assert output.text.strip()
    stats = by_id(page, "chat-stats").text
    assert "completion tokens" in stats and "first token after" in stats, stats
    shoot(page, "chat-streamed")
    assert console_errors(page) == []


def test_stop_cancels_the_stream(page: webdriver.Chrome) -> None:
    start_chat(page, "Write a very long story about a dragon and a knight.", 600)
    output = by_id(page, "chat-output")
    wait_for(lambda: output.get_attribute("data-state") == "streaming" and output.text)
    by_id(page, "chat-stop").click()
    wait_for(lambda: output.get_attribute("data-state") == "stopped", timeout=10)
    assert "stopped by you" in by_id(page, "chat-stats").text
    assert by_id(page, "chat-send").is_enabled() and not by_id(page, "chat-stop").is_enabled()
    length = len(output.text)
    time.sleep(0.5)
    assert len(output.text) == length  # nothing arrives after the stop
    shoot(page, "chat-stopped")
    assert console_errors(page) == []


def test_a_picture_is_attached_to_a_chat_turn(page: webdriver.Chrome, tmp_path: Path) -> None:
    """The attach input shows for a model whose /v1/models entry takes images, and the
    picture goes as an image_url data URL part (the stats count its tokens)."""
    open_tab(page, "chat")
    Select(by_id(page, "chat-model")).select_by_value("smollm2-135m-instruct")
    assert not by_id(page, "chat-image").is_displayed()
    Select(by_id(page, "chat-model")).select_by_value("smollm2-135m-vision")
    wait_for(lambda: by_id(page, "chat-image").is_displayed())
    picture = tmp_path / "red.png"
    Image.new("RGB", (48, 32), (220, 30, 30)).save(picture)
    by_id(page, "chat-image").send_keys(str(picture))
    by_id(page, "chat-max-tokens").clear()
    by_id(page, "chat-max-tokens").send_keys("8")
    by_id(page, "chat-prompt").clear()
    by_id(page, "chat-prompt").send_keys("What is in this picture?")
    by_id(page, "chat-send").click()
    output = by_id(page, "chat-output")
    wait_for(lambda: output.get_attribute("data-state") in ("done", "error"))
    assert output.get_attribute("data-state") == "done", by_id(page, "status").text
    assert "prompt tokens from the image" in by_id(page, "chat-stats").text
    shoot(page, "chat-picture")
    by_id(page, "chat-image-clear").click()
    assert by_id(page, "chat-image").get_attribute("value") == ""
    assert console_errors(page) == []


def test_reasoning_shows_apart_from_the_answer(page: webdriver.Chrome) -> None:
    """The think model (o4-mini): an effort selector only for it, the reasoning in a collapsed
    block above the answer that opens on a click and says how long the thinking was."""
    open_tab(page, "chat")
    Select(by_id(page, "chat-model")).select_by_value("smollm2-135m-instruct")
    assert not by_id(page, "chat-effort").is_displayed()  # that model refuses an effort
    Select(by_id(page, "chat-model")).select_by_value("o4-mini")
    effort = by_id(page, "chat-effort")
    assert effort.is_displayed() and by_id(page, "chat-effort-label").is_displayed()
    Select(effort).select_by_value("low")  # a budget of 8 tokens (session_server.py)
    by_id(page, "chat-max-tokens").clear()
    by_id(page, "chat-max-tokens").send_keys("96")
    # Greedy: sampling freely, SmolLM2 sometimes writes its own "</think>" inside the budget
    # (one run thought for 7 tokens).
    by_id(page, "chat-temperature").clear()
    by_id(page, "chat-temperature").send_keys("0")
    by_id(page, "chat-prompt").clear()
    by_id(page, "chat-prompt").send_keys("Tell me about the sea in a few sentences.")
    by_id(page, "chat-send").click()
    output, block = by_id(page, "chat-output"), by_id(page, "chat-reasoning")
    wait_for(lambda: output.get_attribute("data-state") == "done")
    assert block.is_displayed() and block.get_attribute("data-state") == "done"
    assert block.get_attribute("open") is None  # collapsed until asked
    summary = by_id(page, "chat-reasoning-summary")
    assert summary.text == "Thought for 8 tokens", summary.text
    thought = by_id(page, "chat-reasoning-text")
    assert not thought.is_displayed()
    summary.click()
    wait_for(lambda: thought.is_displayed())
    # (Not asserted: tags in the answer. Past the engine's close SmolLM2 sometimes writes a
    # "</think>" of its own, which is answer text to the engine.)
    assert thought.text.strip() and output.text.strip()
    # The reasoning is its own block, not written into the answer's element. (Not compared
    # by text: SmolLM2, sampling freely, sometimes opens its answer with its thought.)
    assert not output.find_elements(By.ID, "chat-reasoning-text")
    assert not output.find_elements(By.ID, "chat-reasoning")
    assert "8 reasoning" in by_id(page, "chat-stats").text
    shoot(page, "chat-reasoning")
    assert console_errors(page) == []


def test_a_spoken_file_is_transcribed(page: webdriver.Chrome, tmp_path: Path) -> None:
    wav = speak(SENTENCE, tmp_path / "fox.wav")
    open_tab(page, "transcribe")
    Select(by_id(page, "transcribe-model")).select_by_value("whisper-tiny.en")
    Select(by_id(page, "transcribe-format")).select_by_value("verbose_json")
    by_id(page, "transcribe-file").send_keys(str(wav))
    by_id(page, "transcribe-send").click()
    text = wait_for(lambda: by_id(page, "transcribe-output").text)
    assert {"quick", "brown", "fox", "lazy"} <= set(text.lower().replace(".", "").split())
    assert by_id(page, "transcribe-segments").is_displayed()
    assert page.find_elements(By.CSS_SELECTOR, "#transcribe-segments tbody tr")
    shoot(page, "transcribed")
    assert console_errors(page) == []


def audio_seconds(chrome: webdriver.Chrome, element_id: str) -> float:
    """How far the page's <audio> has buffered (it has loaded what it was given)."""
    return float(chrome.execute_script(
        f"const a = document.getElementById('{element_id}');"
        "return a.buffered.length ? a.buffered.end(a.buffered.length - 1) : 0;"))


@pytest.mark.parametrize("response_format", ["mp3", "wav"])
def test_speech_plays_with_a_download(page: webdriver.Chrome, response_format: str) -> None:
    open_tab(page, "speak")
    Select(by_id(page, "speak-model")).select_by_value("piper-joe-medium")
    Select(by_id(page, "speak-format")).select_by_value(response_format)
    by_id(page, "speak-input").clear()
    by_id(page, "speak-input").send_keys(SENTENCE + " It sleeps.")
    by_id(page, "speak-send").click()
    link = wait_for(lambda: by_id(page, "speak-download").is_displayed()
                    and by_id(page, "speak-download"))
    assert link.get_attribute("download") == f"speech.{response_format}"
    assert "first audio after" in by_id(page, "speak-stats").text
    assert by_id(page, "speak-audio").is_displayed()
    # mp3 streamed through a MediaSource, wav as one file: either way the audio is there.
    assert wait_for(lambda: audio_seconds(page, "speak-audio") > 1.5)
    shoot(page, f"spoken-{response_format}")
    assert console_errors(page) == []


def test_a_chat_answer_is_spoken(page: webdriver.Chrome) -> None:
    start_chat(page, "Say hello.", 16)
    wait_for(lambda: by_id(page, "chat-output").get_attribute("data-state") == "done")
    speak_button = by_id(page, "chat-speak")
    wait_for(lambda: speak_button.is_enabled())
    speak_button.click()
    wait_for(lambda: by_id(page, "chat-audio").is_displayed()
             and audio_seconds(page, "chat-audio") > 0.2)
    shoot(page, "chat-spoken")
    assert console_errors(page) == []


def test_images_appear_with_downloads(page: webdriver.Chrome) -> None:
    open_tab(page, "images")
    Select(by_id(page, "images-model")).select_by_value("tiny-random-sd")
    by_id(page, "images-size").send_keys("64x64")
    by_id(page, "images-n").clear()
    by_id(page, "images-n").send_keys("2")
    by_id(page, "images-prompt").send_keys("a red bicycle")
    by_id(page, "images-send").click()
    images = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#images-output img"))
    assert len(images) == 2
    wait_for(lambda: all(page.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", img) == 64
        for img in images))
    links = page.find_elements(By.CSS_SELECTOR, "#images-output a[download]")
    assert [link.get_attribute("download") for link in links] == ["image-1.png", "image-2.png"]
    shoot(page, "images")
    assert console_errors(page) == []


def test_usage_shows_the_requests_just_made(page: webdriver.Chrome) -> None:
    open_tab(page, "usage")  # opening the tab loads the key's usage
    wait_for(lambda: by_id(page, "status").text.startswith("Usage:"))
    by_id(page, "usage-refresh").click()  # the button loads it again, as the tab did
    rows = wait_for(lambda: page.execute_script(
        "return Array.from(document.querySelectorAll('#usage-table tbody tr'))"
        ".map((tr) => Array.from(tr.cells).map((td) => td.textContent))"))
    models = {row[2]: int(row[3]) for row in rows}
    assert models.get("smollm2-135m-instruct", 0) >= 2, rows  # streamed, and stopped
    assert models.get("whisper-tiny.en", 0) >= 1 and models.get("tiny-random-sd", 0) >= 1
    bars = page.execute_script("return Array.from(document.querySelectorAll("
                               "'#usage-chart rect[data-model]')).map((r) => r.dataset.model)")
    assert set(bars) >= {
        "smollm2-135m-instruct", "whisper-tiny.en", "tiny-random-sd"}
    shoot(page, "usage-375px")
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    shoot(page, "usage-desktop")
    assert console_errors(page) == []
