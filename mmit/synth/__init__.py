"""LLM-generated instruction data, ``python -m mmit.synth <recipe> [key=value ...]``: the generation
modes and their LLM calls (``generate``), and Self-Instruct's parsing and quality filters (``filters``)."""

from mmit.synth.generate import (
    MODES,
    Answer,
    ChatState,
    SeedTask,
    load_seed_tasks,
    main,
    options_of,
    synthesize,
    take_turn,
)

__all__ = [
    "MODES",
    "Answer",
    "ChatState",
    "SeedTask",
    "load_seed_tasks",
    "main",
    "options_of",
    "synthesize",
    "take_turn",
]
