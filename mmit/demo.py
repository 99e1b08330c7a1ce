"""A small web demo to chat with a trained run (or a base model), attaching images or audio.

``python -m mmit.demo RUN_DIR`` serves a Gradio page on http://127.0.0.1:7860. Each browser
session keeps its own ``ChatSession``; an upload belongs to the message it is sent with.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio reads it: no telemetry, no version check

import gradio as gr

from mmit.cli import user_errors, whole_number
from mmit.data.media import media_ref
from mmit.generation import GenerationOptions
from mmit.inference import ChatSession, LoadedModel, load_base, load_run

log = logging.getLogger("mmit.demo")

DECODING = ("greedy", "beam", "sampling")
NUM_BEAMS = 4
EMPTY_ANSWER = "(empty answer: the model ended its turn at once)"  # an empty bubble would look like a fault


def generation_options(max_new_tokens: float, decoding: str, temperature: float) -> GenerationOptions:
    """The options the page's controls describe."""
    return GenerationOptions(
        max_new_tokens=int(max_new_tokens),
        num_beams=NUM_BEAMS if decoding == "beam" else 1,
        do_sample=decoding == "sampling",
        temperature=float(temperature),
    )


def chat_turn(
    loaded: LoadedModel,
    session: ChatSession | None,
    history: list[dict],
    text: str,
    image: str | None,
    audio: str | None,
    max_new_tokens: float,
    decoding: str,
    temperature: float,
) -> tuple[ChatSession, list[dict], str, str | None, str | None]:
    """Send one message (with its uploads): the session, the chat shown, and emptied inputs."""
    session = session or ChatSession(loaded)
    paths = [path for path in (image, audio) if path]
    if not text.strip() and not paths:
        return session, history, text, image, audio
    shown = [*({"path": path} for path in paths), *([text] if text.strip() else [])] if paths else text
    history = [*history, {"role": "user", "content": shown}]
    try:
        session.options = generation_options(max_new_tokens, decoding, temperature)
        answer = session.ask(text, [media_ref(path) for path in paths]) or EMPTY_ANSWER
    except Exception as err:  # shown in the chat, not as a traceback; the session keeps its earlier turns
        log.exception("the model could not answer")
        answer = f"⚠️ {err}"
    return session, [*history, {"role": "assistant", "content": answer}], "", None, None


def clear_chat(session: ChatSession | None) -> tuple[ChatSession | None, list, str, None, None]:
    if session is not None:
        session.reset()
    return session, [], "", None, None


def describe(loaded: LoadedModel, origin: str | None = None) -> str:
    """Where the weights come from, for the page header."""
    if origin is None and loaded.checkpoint is not None:
        origin = f"run `{loaded.checkpoint.parent.parent}`, checkpoint `{loaded.checkpoint.name}`"
    origin = origin or "no trained weights (base model)"
    media = ", ".join(loaded.model.slots) or "text only"
    return f"## mmit demo\n{origin}  \nmodel: `{loaded.source}`; media: {media}; {loaded.device}, {loaded.precision}"


def build_app(loaded: LoadedModel, options: GenerationOptions, origin: str | None = None) -> gr.Blocks:
    """The chat page for one loaded model; ``options`` gives the controls' starting values.

    ``origin`` replaces the header's account of where the weights come from (by default: the
    checkpoint's run and step, or "base model").
    """
    with gr.Blocks(title="mmit demo", analytics_enabled=False) as app:
        gr.Markdown(describe(loaded, origin))
        session = gr.State(None)  # a ChatSession per browser session, made on the first message
        # Raw text: a model's output is shown as it is, not rendered as Markdown.
        chat = gr.Chatbot(
            label="chat", render_markdown=False, buttons=["copy", "copy_all"], feedback_options=None, elem_id="chat"
        )
        with gr.Row():
            image = gr.Image(
                type="filepath",
                image_mode=None,  # hand the model the uploaded file itself, not a converted copy
                sources=["upload", "clipboard"],
                label="image",
                elem_id="image",
                height=200,
                visible="image" in loaded.model.slots,
            )
            audio = gr.Audio(
                type="filepath",
                sources=["upload"],
                label="audio",
                elem_id="audio",
                visible="audio" in loaded.model.slots,
            )
        text = gr.Textbox(label="message", placeholder="Ask about the upload, or just chat", lines=2, elem_id="message")
        with gr.Row():
            send = gr.Button("Send", variant="primary", elem_id="send")
            clear = gr.Button("Clear", elem_id="clear")
        with gr.Accordion("generation", open=False):
            max_new_tokens = gr.Slider(1, 512, value=options.max_new_tokens, step=1, label="max new tokens")
            decoding = gr.Radio(
                list(DECODING),
                value="sampling" if options.do_sample else "beam" if options.num_beams > 1 else "greedy",
                label="decoding",
            )
            temperature = gr.Slider(0.05, 2.0, value=options.temperature, step=0.05, label="temperature (sampling)")

        turn_inputs = [session, chat, text, image, audio, max_new_tokens, decoding, temperature]
        turn_outputs = [session, chat, text, image, audio]
        # One answer at a time: every session shares the one model.
        ask = functools.partial(chat_turn, loaded)
        gr.on([send.click, text.submit], ask, turn_inputs, turn_outputs, api_name="ask", concurrency_limit=1)
        # The chat's own trash button clears the session too.
        gr.on([clear.click, chat.clear], clear_chat, [session], turn_outputs, api_name="clear")
    return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mmit.demo", description="Chat with a trained run (or a base model) in the browser."
    )
    parser.add_argument("run_dir", nargs="?", help="a training run directory")
    parser.add_argument("--checkpoint", default="latest", help="latest (default), none, or a step number")
    parser.add_argument("--base", nargs="+", metavar="OVERRIDE", help="a base model from config overrides instead")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-new-tokens", type=whole_number(1), default=GenerationOptions.max_new_tokens)
    args = parser.parse_args(argv)
    if (args.run_dir is None) == (args.base is None):
        parser.error("give exactly one of RUN_DIR and --base OVERRIDE...")
    return args


@user_errors("mmit.demo")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own startup requests to itself

    if args.base:
        loaded = load_base(args.base, device=args.device)
        origin = f"base model `{' '.join(args.base)}`, no trained weights"
    else:
        loaded = load_run(args.run_dir, args.checkpoint, device=args.device)
        origin = None if loaded.checkpoint else f"run `{args.run_dir}` without its trained weights (--checkpoint none)"
    app = build_app(loaded, GenerationOptions(max_new_tokens=args.max_new_tokens), origin)
    app.launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
