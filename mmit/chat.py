"""Talk to a trained run from the terminal.

One shot:     python -m mmit.chat RUN_DIR --image cat.png "What animal is this?"
Interactive:  python -m mmit.chat RUN_DIR        (then /image PATH, /audio PATH, /reset, /quit)
Base model:   python -m mmit.chat --base +recipe=vqa -- "Hello"

Answers come from the same chat template and media splice as training (mmit.inference).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mmit.cli import user_errors
from mmit.data.media import media_ref
from mmit.eval import add_generation_args, generation_options
from mmit.saved_config import UnsafeConfigError, run_config

if TYPE_CHECKING:
    from mmit.inference import ChatSession

HELP = """commands: /image PATH  /audio PATH  /video PATH  (attach to your next message)
          /reset  (new conversation)   /quit  (or Ctrl-D)"""


def article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmit.chat", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a training run directory")
    p.add_argument("prompt", nargs="?", help="ask once and exit (interactive when absent)")
    p.add_argument("--base", nargs="+", metavar="OVERRIDE", help="chat with an untrained model composed from overrides")
    p.add_argument("--checkpoint", default="latest", help="latest (default), none, a step number or a directory")
    p.add_argument("--image", action="append", default=[], type=Path, help="attach an image (repeatable)")
    p.add_argument("--audio", action="append", default=[], type=Path, help="attach an audio clip (repeatable)")
    p.add_argument("--video", action="append", default=[], type=Path, help="attach a video (repeatable)")
    p.add_argument("--system", help="a system message")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision", default=None, choices=("auto", "bf16", "fp32"), help="default: the run's trainer.precision"
    )
    add_generation_args(p, max_new_tokens=128)
    args = p.parse_intermixed_args(argv)  # the prompt may come after the options
    if args.base is not None and args.run_dir is not None:
        # `--base OVERRIDES -- "prompt"`: argparse puts the words after -- into the positionals
        args.prompt, args.run_dir = str(args.run_dir), None
    if (args.run_dir is None) == (args.base is None):
        p.error("give either a run directory or --base OVERRIDE...")
    return args


def shown(answer: str, session: ChatSession) -> str:
    """The answer as printed: an empty one says so (and why, for the tiny random model)."""
    if answer.strip():
        return answer
    tiny = str(session.loaded.cfg.get("llm", {}).get("_target_", "")).endswith(".load_tiny")
    why = ": expected of llm=tiny, a random 2-layer model" if tiny else ""
    return f"(an empty answer: the model ended its turn at once{why})"


def interact(session: ChatSession, read=input, write=print) -> None:
    """The read-answer loop; media attached with /image, /audio or /video go with the next message."""
    pending = []
    write(HELP)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            return
        if not line:
            continue
        command, _, rest = line.partition(" ")
        try:
            if command in ("/quit", "/exit"):
                return
            if command == "/reset":
                session.reset()
                pending = []
                write("(new conversation)")
            elif command in ("/image", "/audio", "/video"):
                ref = media_ref(rest.strip())
                if ref.kind != command[1:]:
                    raise ValueError(f"{rest.strip()} is {article(ref.kind)} {ref.kind} file, not {command[1:]}")
                pending.append(ref)
                write(f"(attached {rest.strip()})")
            elif command.startswith("/"):
                write(HELP)
            else:
                answer = session.ask(line, pending)
                pending = []
                write(f"assistant> {shown(answer, session)}")
        except (ValueError, FileNotFoundError) as error:
            write(f"error: {error}")


@user_errors("mmit.chat")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Mistakes in the command line fail in a second: before torch and the model load.
    media = []
    for flag, paths in (("image", args.image), ("audio", args.audio), ("video", args.video)):
        for path in paths:
            media.append(media_ref(path))  # its kind read from the file's extension
            if media[-1].kind != flag:
                kind = media[-1].kind
                raise ValueError(f"--{flag} {path} is {article(kind)} {kind} file, not {flag}")
    if media and args.prompt is None:
        raise ValueError("--image / --audio / --video go with a prompt; in the interactive chat use /image PATH")
    if args.run_dir is not None:
        run_config(args.run_dir)
    from mmit.inference import ChatSession, load_base, load_run

    if args.base is not None:
        loaded = load_base(args.base, args.device, args.precision or "auto")
    else:
        try:
            loaded = load_run(args.run_dir, args.checkpoint, args.device, args.precision)
        except UnsafeConfigError as err:  # a run folder is data: it may only name mmit's own builders
            raise SystemExit(f"mmit.chat: {err}") from err
    session = ChatSession(loaded, generation_options(args), system=args.system)
    if args.prompt is not None:
        print(shown(session.ask(args.prompt, media), session))
        return
    interact(session)


if __name__ == "__main__":
    main()
