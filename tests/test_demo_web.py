"""The web demo in a real browser: upload an image, ask, see the model's own answer, clear.

A tiny vqa run is trained once for the module; the app runs in-process and Debian's chromium,
driven by Playwright, uses it like a person would.
"""

from __future__ import annotations

import os
import socket

import pytest
from PIL import Image

from mmit.data.media import media_ref
from mmit.demo import EMPTY_ANSWER, build_app, chat_turn, generation_options
from mmit.generation import GenerationOptions
from mmit.inference import ChatSession, load_base, load_run

CHROMIUM = "/usr/bin/chromium"
# Without these, chromium waits on connections this offline machine refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000
# A barely trained tiny model often ends its turn at once; the test asks the first of these it answers.
QUESTIONS = ("What colour is the shape?", "Describe the picture.", "How many shapes are there?")
OPTIONS = GenerationOptions(max_new_tokens=8)


@pytest.fixture(scope="module")
def run_dir(tiny_vqa_run):
    return tiny_vqa_run[0]


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload") / "red-square.png"
    image = Image.new("RGB", (96, 64), "white")
    image.paste((200, 30, 30), (24, 12, 72, 52))
    image.save(path)
    return path


@pytest.fixture(scope="module")
def demo_url(run_dir):
    with socket.socket() as probe:  # a free port, chosen by the OS
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(load_run(run_dir, device="cpu"), OPTIONS)
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield url
    app.close()


@pytest.fixture(scope="module")
def browser():  # first in the browser test's arguments, so a missing browser skips before any training
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser test needs playwright (pip install playwright)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # a fresh profile each time
        yield browser
        browser.close()


@pytest.mark.slow
def test_browser_chat_shows_the_models_answer_and_clear_empties_it(browser, demo_url, run_dir, picture, tmp_path):
    from playwright.sync_api import expect

    direct = load_run(run_dir, device="cpu")
    for question in QUESTIONS:
        expected = ChatSession(direct, OPTIONS).ask(question, [media_ref(picture)])
        if expected:
            break

    page = browser.new_page(viewport={"width": 1100, "height": 1000})
    outside = []
    page.on("request", lambda request: None if request.url.startswith(demo_url) else outside.append(request.url))
    page.goto(demo_url)
    expect(page.locator("#send")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("step-0000004")).to_be_visible()  # the header names the checkpoint
    expect(page.locator("#audio")).to_be_hidden()  # this model has no audio encoder

    page.locator("#image input[type=file]").set_input_files(picture)
    expect(page.locator("#image img")).to_be_visible(timeout=WAIT_MS)  # uploaded before we send
    page.locator("#message textarea").fill(question)
    page.locator("#send").click()

    bot = page.locator('#chat [data-testid="bot"]')
    expect(bot).to_have_count(1, timeout=WAIT_MS)
    expect(bot).to_have_text(
        expected or EMPTY_ANSWER, timeout=WAIT_MS
    )  # whitespace-normalised, as the browser lays it out
    expect(page.locator('#chat [data-testid="user"] img')).to_be_visible()  # the upload went with the message
    expect(page.locator("#image img")).to_have_count(0)  # and the upload box is empty again
    expect(page.locator("#message textarea")).to_have_value("")

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(screenshot) as shot:
        assert shot.width >= 1100 and shot.height >= 1000

    page.locator("#clear").click()
    expect(page.locator('#chat [data-testid="bot"], #chat [data-testid="user"]')).to_have_count(0, timeout=WAIT_MS)

    # After Clear the session starts over: a new question is answered as the first of a conversation.
    fresh = ChatSession(direct, OPTIONS).ask("Hello?")
    page.locator("#message textarea").fill("Hello?")
    page.locator("#send").click()
    expect(bot).to_have_count(1, timeout=WAIT_MS)
    expect(bot).to_have_text(fresh or EMPTY_ANSWER, timeout=WAIT_MS)
    page.close()
    assert not outside, f"the page reached beyond the demo server: {outside}"


def test_an_image_sent_to_a_text_only_model_is_a_readable_message(picture):
    text_only = load_base(["+recipe=text_tiny"], device="cpu")
    options = (8, "greedy", 1.0)
    session, history, text, image, audio = chat_turn(text_only, None, [], "What is this?", str(picture), None, *options)
    assert history[0]["role"] == "user" and history[0]["content"][-1] == "What is this?"
    assert history[1]["role"] == "assistant" and history[1]["content"].startswith("⚠️ this model has no image encoder")
    assert session.chat == []  # the failed turn is not part of the conversation
    assert (text, image, audio) == ("", None, None)


def test_decoding_choices_map_to_generation_options():
    assert generation_options(16, "greedy", 0.7) == GenerationOptions(max_new_tokens=16, temperature=0.7)
    assert generation_options(16, "beam", 0.7).num_beams == 4
    sampling = generation_options(16, "sampling", 0.7)
    assert sampling.do_sample and sampling.temperature == 0.7 and sampling.num_beams == 1
