"""LLM-generated instruction data: filters, parsing, the three modes with a scripted LLM, resume,
and one run of a real tiny model whose shards a training job reads."""

import hashlib
import json
from pathlib import Path

import pytest

from mmit.build import compose_recipe
from mmit.data.shards import read_shards, shard_urls
from mmit.data.sources import read_conversations
from mmit.metrics import text_rouge_l
from mmit.paths import RECIPES_DIR
from mmit.synth import MODES, Answer, ChatState, SeedTask, load_seed_tasks, options_of, synthesize, take_turn
from mmit.synth.filters import (
    InstructionPool,
    TextFilter,
    blocklist_pattern,
    check_blocklist,
    check_copied,
    check_echo,
    looks_truncated,
    normalize_text,
    parse_dialogue,
    parse_input,
    parse_numbered_list,
    repetition_ratio,
    trim_to_sentence,
)

# --- ROUGE-L, blocklist, duplicates, lengths -------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # give three tips for staying | healthy / happy: LCS 5 of 6 and 6 -> F1 = 2*5/12.
        ("Give three tips for staying healthy.", "Give three tips for staying happy.", 10 / 12),
        # 6 tokens inside 7 ("short" is extra): LCS 6 -> F1 = 2*6/(6+7) = 12/13.
        # (coco's beta = 1.2 would give 0.910: the filter must use F1, as rouge-score does.)
        ("Write a poem about the sea.", "Write a short poem about the sea.", 12 / 13),
        # only "the ... sentence" in common: LCS 2 -> F1 = 2*2/(5+6) = 4/11.
        ("Translate the sentence into French.", "Summarize the article in one sentence.", 4 / 11),
        # please the causes of the war in: LCS 7 of 10 and 10 -> exactly 0.7.
        (
            "Please list the main causes of the war in Europe.",
            "Please name the three causes of the war in Asia.",
            0.7,
        ),
        ("Sort these numbers.", "Name a capital city.", 0.0),
    ],
)
def test_rouge_l_f1_on_hand_checked_pairs(a, b, expected):
    assert text_rouge_l(a, b, beta=1.0) == pytest.approx(expected)
    pool = InstructionPool(rouge_threshold=0.7)
    pool.add(b)
    score, similar = pool.most_similar(a)
    assert score == pytest.approx(expected) and similar == (b if expected else "")
    # Self-Instruct keeps a score of exactly the threshold and rejects anything above it.
    found = pool.check(a)
    assert (found is not None and found.reason == "rouge_similar") == (expected > 0.7 + 1e-9)


def test_near_duplicate_is_checked_against_every_kept_text():
    pool = InstructionPool(rouge_threshold=0.7)
    for text in ("Name three rivers in Africa.", "Write a limerick about a cat.", "Explain how rainbows form."):
        assert pool.offer(text) is None
    found = pool.offer("Write a limerick about a dog.")  # LCS 5 of 6 -> 0.83 with the second one
    assert found.reason == "rouge_similar" and "limerick about a cat" in found.detail
    assert len(pool) == 3


def test_exact_duplicates_after_normalisation():
    assert normalize_text("  Give THREE tips,  for staying healthy!  ") == "give three tips for staying healthy"
    pool = InstructionPool(rouge_threshold=1.0)  # near-duplicate check off: exact matches still caught
    assert pool.offer("Give three tips for staying healthy.") is None
    assert pool.offer("give three tips for staying healthy").reason == "exact_duplicate"
    assert pool.offer("Give three tips for staying healthy today.") is None


def test_blocklist_matches_whole_words_and_phrases():
    pattern = blocklist_pattern(["draw", "image", "go to"])
    assert check_blocklist("Draw a cat sitting on a mat.", pattern).reason == "blocklist"
    assert "'image'" in check_blocklist("Describe the IMAGE in detail.", pattern).detail
    assert check_blocklist("Tell me how to go  to the station.", pattern) is not None
    assert check_blocklist("Describe a drawing room in an old house.", pattern) is None  # draw != drawing
    assert check_blocklist("Explain what imagery means in poetry.", pattern) is None
    assert check_blocklist("Where do you go today?", pattern) is None
    assert blocklist_pattern([]) is None and check_blocklist("anything", None) is None


def test_echoes_of_the_instruction_or_input():
    assert check_echo("The cat sat.", "Fix the grammar.", "The dog barked. The cat sat!").reason == "echo"
    assert check_echo("Fix the grammar", "Fix the grammar.", "") is not None
    assert check_echo("The cat sat on the mat.", "Fix the grammar.", "The cat sit on the mat.") is None
    assert check_echo("", "Anything.", "") is None


def test_copies_of_the_prompt_wording():
    parts = "Like this:\nUser: What is on the table?\nAssistant: (its answer)\nNow about this image:\n\0".split("\0")
    assert check_copied("User: What is on the table?\nAssistant: Nothing.", parts).reason == "copies_prompt"
    assert check_copied("User: Which shape?\nAssistant: (its answer)", parts).reason == "copies_prompt"
    assert check_copied("User: What is on the desk?\nAssistant: A cup.", parts) is None
    assert check_copied("It is on the table.", parts) is None  # three words of it, not the whole sentence
    parts = ["Example:\nAssistant: There is a white cup next to a plate with two slices of bread.\nNow: ", ""]
    assert check_copied("I see a white cup next to a plate of food.", parts).reason == "copies_prompt"  # 6 words
    assert check_copied("I see a white cup and a red plate.", parts) is None


def test_length_start_and_repetition_limits():
    f = TextFilter(min_words=4, max_words=8, check_start=True, max_repetition=0.3)
    assert f.check("Too short here.").reason == "too_short"  # 3 words < 4
    assert f.check("one two three four five six seven eight nine").reason == "too_long"  # 9 > 8
    assert f.check("Write four words now.") is None
    assert f.check("").reason == "empty"
    assert f.check("- Write four words now.").reason == "bad_start"
    assert f.check("¿Write four words now?").reason == "bad_start"
    # 9 words, 7 trigrams of which 3 repeat an earlier one: ratio 3/7.
    assert repetition_ratio("a b c a b c a b c") == pytest.approx(1 - 3 / 7)
    looping = "I like tea. I like tea. I like tea. I like tea."
    assert TextFilter(max_repetition=0.3).check(looping).reason == "repetitive"
    assert repetition_ratio("Every word here is different from the others.") == 0.0


# --- parsing what the LLM wrote --------------------------------------------------------------


def test_numbered_lists_are_parsed_in_common_layouts():
    answer = (
        "Sure! Here are some new tasks:\n\n"
        "7. Write a limerick about a forgetful cat.\n"
        "8) **Summarize** the plot of a famous novel\n"
        "   in three sentences.\n"
        'Task 9: "Convert 5 kilometres to miles."\n\n'
        "10. Instruction: Name two planets with rings.\n"
        "These are just examples.\n"  # after a blank line: not part of item 10
        "\n"
        "1. Write a limerick about a forgetful cat.\n"  # the list starts over: ignored
    )
    assert parse_numbered_list(answer) == [
        "Write a limerick about a forgetful cat.",
        "Summarize the plot of a famous novel in three sentences.",
        "Convert 5 kilometres to miles.",
        "Name two planets with rings. These are just examples.",
    ]
    assert parse_numbered_list("I cannot think of any new tasks.") == []


def test_truncated_last_item():
    def cut(answer, flag=None):
        return looks_truncated(answer, parse_numbered_list(answer), flag)

    # Not known whether generation stopped at the limit: punctuation decides, against the other items.
    assert cut("1. Write a poem.\n2. Explain why the")
    assert not cut("1. Write a poem.\n2. Explain why.")
    assert not cut("1. Write a poem\n2. Name a river")  # this list uses no full stops at all
    assert not cut("1. Write a poem.\n2. Name a river\n\nHope this helps")  # the answer goes on after it
    # Known: the generator's word counts, if the answer ends inside the last item.
    assert cut("1. Write a poem.\n2. Name a river", True) and not cut("1. Write a poem.\n2. Explain why the", False)
    assert not cut("1. Write a poem.\n2. Name a river.\n\nHope this", True)


def test_list_items_lose_emphasis_quotes_and_repeated_numbers():
    answer = '1. *Translate a sentence from Spanish to English*\n2. "3. Generate a quiz question."\n3. _Plan a trip._'
    assert parse_numbered_list(answer) == [
        "Translate a sentence from Spanish to English",
        "Generate a quiz question.",
        "Plan a trip.",
    ]


def test_numbered_list_continuation_joins_lines():
    assert parse_numbered_list("1. Explain how\ntides work.\n2. List three fruits.") == [
        "Explain how tides work.",
        "List three fruits.",
    ]


@pytest.mark.parametrize(
    "written, expected",
    [
        ("None", ""),
        ("Input: None.", ""),
        ("<noinput>", ""),
        ("Input: 3, 5, 7", "3, 5, 7"),
        ('"The cat sat on the mat."', "The cat sat on the mat."),
        ("Sort the numbers.", ""),  # the task repeated back is no input
        ("This task does not need an input.", ""),
        ('Task: Sort the numbers.\n\nInput: "4, 1, 3"\nOutput: "1, 3, 4"', "4, 1, 3"),
        ("Task: Sort the numbers.\nThis task is about sorting.", ""),  # labels, but no Input: section
        ("**Input:**\nThe cat sat on the mat.\nIt was warm.", "The cat sat on the mat.\nIt was warm."),
    ],
)
def test_inputs_are_parsed(written, expected):
    assert parse_input(written, "Sort the numbers.") == expected


def test_a_cut_dialogue_loses_its_unfinished_turn():
    text = "User: Hi?\nAssistant: Hello.\nUser: What is it?\nAssistant: It is a"
    assert [m.content for m in parse_dialogue(text, cut=True)] == ["Hi?", "Hello."]
    assert [m.content for m in parse_dialogue(text + " cat.")][-1] == "It is a cat."
    # Cut inside a trailing question: that question goes, the exchanges before it stay.
    assert len(parse_dialogue("User: Hi?\nAssistant: Hello.\nUser: And wh", cut=True)) == 2


def test_dialogues_are_parsed_into_alternating_turns():
    text = (
        "Here is a conversation:\n"
        "Assistant: Hello!\n"  # before the first user turn: dropped
        "User: What colour is the circle?\n"
        "Assistant: It is red.\n"
        "It sits at the top.\n"
        "**Human:** How many shapes are there?\n"
        "AI: Two.\n"
        "User: And the square?"  # a trailing question without an answer is dropped
    )
    turns = parse_dialogue(text)
    assert [(m.role, m.content) for m in turns] == [
        ("user", "What colour is the circle?"),
        ("assistant", "It is red.\nIt sits at the top."),
        ("user", "How many shapes are there?"),
        ("assistant", "Two."),
    ]
    assert len(parse_dialogue(text, max_exchanges=1)) == 2
    assert parse_dialogue("A red circle on a blue square.") == []


# --- the modes, with a scripted LLM ------------------------------------------------------------

# Four slots with disjoint vocabularies: two instructions share at most a few words.
VERBS = ["Describe", "Summarize", "List", "Explain", "Compare", "Rank", "Define", "Outline"]
ADJECTIVES = ["ancient", "modern", "tiny", "famous", "rural", "frozen", "noisy", "hidden"]
NOUNS = ["volcanoes", "markets", "castles", "bees", "rivers", "engines", "forests", "songs"]
ADVERBS = ["carefully", "briefly", "playfully", "formally", "simply", "vividly", "honestly", "slowly"]


def _digest(*parts) -> int:
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest(), 16)


def _instruction(h: int) -> str:
    return f"{VERBS[h % 8]} {ADJECTIVES[(h >> 3) % 8]} {NOUNS[(h >> 6) % 8]} {ADVERBS[(h >> 9) % 8]}."


class ScriptedLLM:
    """Deterministic text from the prompt (and the sampling seed), with every kind of bad output."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, prompts, options):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return [self.answer(p.chat, options.seed if options.do_sample else 0) for p in prompts]

    def answer(self, chat, seed):
        text = chat[-1]["content"]
        h = _digest(text, seed)
        if text.startswith("Here are some tasks"):
            if h % 7 == 0:
                return "I am sorry, I cannot do that."  # unparseable
            items = [_instruction(h >> (12 * k)) for k in range(4)]
            near = items[0].rsplit(" ", 1)[0] + (" loudly." if "slowly" in items[0] else " slowly.")
            items += ["Draw a map of your town.", "Be nice.", items[1].upper(), near, "Explain how the tides"]
            return "Here are new tasks:\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(items, 7))
        if text.startswith("Task:"):
            return "None" if h % 2 else "Input: the quick brown fox"
        if " frozen " in text:
            return ""  # an empty output
        if " noisy " in text:
            return "item " * 40  # a loop
        return f"Answer to '{text.splitlines()[0]}'."


def _self_instruct(out: Path, *overrides):
    return compose_recipe(
        "self_instruct",
        [f"out_dir={out}", "target=12", "prompts_per_round=4", "batch_size=3", "max_rounds=6", *overrides],
    )


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("*/shard-*.tar"))}


def test_self_instruct_filters_counts_and_shards(tmp_path):
    out = tmp_path / "si"
    manifest = synthesize(_self_instruct(out), ScriptedLLM())
    g = manifest["generation"]
    assert g["mode"] == "self_instruct" and g["samples"] == 12
    rejected = g["rejected"]
    for reason in ("unparseable", "blocklist", "too_short", "truncated", "exact_duplicate", "rouge_similar"):
        assert rejected.get(reason, 0) > 0, (reason, rejected)
    assert rejected["empty_output"] > 0 and rejected["repetitive_output"] > 0
    instruction_rejects = sum(v for k, v in rejected.items() if not k.endswith(("_output", "_input")))
    assert g["proposed"] == g["kept"] + instruction_rejects - rejected["unparseable"]
    assert g["examples"]["kept"] and g["examples"]["rejected"]["blocklist"][0]["detail"] == "contains 'draw'"
    # Shards read back through the reader training uses; kept instructions pass the filters pairwise.
    convs = read_conversations([out / name for name in manifest["sets"]])
    assert len(convs) == 12 == sum(s["samples"] for s in manifest["sets"].values())
    instructions = [c.messages[0].content.split("\n\n")[0] for c in convs]
    assert len({normalize_text(i) for i in instructions}) == 12
    assert all(text_rouge_l(a, b, beta=1.0) <= 0.7 for i, a in enumerate(instructions) for b in instructions[:i])
    assert any("\n\nthe quick brown fox" in c.messages[0].content for c in convs)  # an input was kept
    assert all(c.meta["tasks"] == ["self_instruct"] and c.messages[1].role == "assistant" for c in convs)
    assert manifest["sets"]["train"]["by_task"] == {"self_instruct": manifest["sets"]["train"]["samples"]}
    assert manifest["config"]["seed"] == 0 and manifest["sources"]


def test_same_seed_gives_identical_shards_and_other_seed_differs(tmp_path):
    first = synthesize(_self_instruct(tmp_path / "a"), ScriptedLLM())
    synthesize(_self_instruct(tmp_path / "b"), ScriptedLLM())
    assert _shard_bytes(tmp_path / "a") == _shard_bytes(tmp_path / "b")
    other = synthesize(_self_instruct(tmp_path / "c", "seed=1"), ScriptedLLM())
    assert _shard_bytes(tmp_path / "c") != _shard_bytes(tmp_path / "a")
    assert first["generation"]["batches"] == {"generated": first["generation"]["batches"]["generated"]}
    assert other["generation"]["samples"] == 12


def test_interrupted_run_resumes_without_regenerating(tmp_path):
    whole = ScriptedLLM()
    synthesize(_self_instruct(tmp_path / "whole"), whole)
    with pytest.raises(KeyboardInterrupt):
        synthesize(_self_instruct(tmp_path / "cut"), ScriptedLLM(fail_after=5))
    assert not list((tmp_path / "cut").glob("*/shard-*.tar"))
    again = ScriptedLLM()
    manifest = synthesize(_self_instruct(tmp_path / "cut"), again)
    assert again.calls == whole.calls - 5  # the five stored batches are replayed, not generated
    assert manifest["generation"]["batches"] == {"generated": whole.calls - 5, "replayed": 5}
    assert _shard_bytes(tmp_path / "cut") == _shard_bytes(tmp_path / "whole")
    # A finished run is replayed whole and never loads (or calls) the LLM.
    synthesize(_self_instruct(tmp_path / "cut"), ScriptedLLM(fail_after=0))


def test_answers_cut_at_max_new_tokens_are_counted_and_stored(tmp_path):
    """An LLM that reports which answers stopped at the limit: those outputs are dropped as
    truncated, the flags are stored with the batch, and a replay sees them too."""
    scripted = ScriptedLLM()

    def llm(prompts, options):
        answers = scripted(prompts, options)
        # Outputs for tasks with an input stop at the limit; proposals and inputs are complete.
        return [Answer.of(a, "\n\nthe quick brown fox" in p.chat[-1]["content"]) for a, p in zip(answers, prompts)]

    first = synthesize(_self_instruct(tmp_path / "cut"), llm)
    assert first["generation"]["rejected"].get("truncated_output", 0) > 0
    stored = [json.loads(f.read_text()) for f in (tmp_path / "cut" / ".synth" / "calls").glob("*.json")]
    assert all(len(s["cut"]) == len(s["answers"]) and set(s["cut"]) <= {True, False} for s in stored)
    again = synthesize(_self_instruct(tmp_path / "cut"), ScriptedLLM(fail_after=0))
    assert again["generation"]["rejected"] == first["generation"]["rejected"]


def test_trim_to_sentence():
    assert trim_to_sentence('He said "stop." Then he ran to the') == 'He said "stop."'
    assert trim_to_sentence("Is it 3.5 km? Yes! And then") == "Is it 3.5 km? Yes!"
    assert trim_to_sentence("No full stop here") == ""


def test_self_chat_stop_rules():
    cfg = compose_recipe("self_chat", ["stop.max_turns=2", "stop.max_words=40"])
    rules = {"stop_phrases": ["goodbye"], "turn_filter": TextFilter(max_repetition=0.3)}

    def chat_after(*turns):
        chat, openings = ChatState(0, "tea", "a student"), InstructionPool(TextFilter(min_words=4), 0.7)
        for role, text in zip(["user", "assistant"] * 3, turns):
            take_turn(cfg, chat, role, text, openings, rules)
            if chat.stop:
                break
        return chat

    full = chat_after("User: How do I brew green tea?", "Use water at 80 degrees.", "For how long?", "Two minutes.")
    assert full.stop == "max_turns" and [m.role for m in full.turns] == ["user", "assistant"] * 2
    assert full.turns[0].content == "How do I brew green tea?"  # the speaker label is removed
    assert chat_after("How do I brew green tea?", "Hot water.", "Thanks, goodbye!").stop == "stop_phrase"
    assert chat_after("How do I brew green tea?", "   ").stop == "empty_turn"
    repeated = chat_after("How do I brew green tea?", "Use hot water.", "How do I brew green tea?")
    assert repeated.stop == "repeated_turn" and len(repeated.turns) == 2
    assert chat_after("Tea?").stop == "opening_too_short"
    assert chat_after("How do I brew green tea?", Answer.of("Use hot water and", True)).stop == "truncated_turn"
    trimmed = chat_after("How do I brew green tea?", Answer.of("Use hot water. Wait two minutes. Then", True))
    assert trimmed.turns[-1].content == "Use hot water. Wait two minutes." and trimmed.stop == ""
    long = chat_after("How do I brew green tea?", " ".join(f"word{i}" for i in range(40)))
    assert long.stop == "max_length"
    assert chat_after("How do I brew tea?", "tea tea tea tea tea tea tea tea").stop == "repetitive_turn"
    # The model speaking for both sides: its turn is cut where the other speaker begins.
    both = chat_after("How do I brew green tea?\nAssistant: Like this.", "Hot water.")
    assert both.turns[0].content == "How do I brew green tea?"


def test_self_chat_writes_conversations(tmp_path):
    users = ["Tell me about {topic}, please.", "Why is that?", "Goodbye!"]
    assistants = {1: "Start with the basics and practise every day.", 3: "Because small steps add up over time."}

    def llm(prompts, options):
        out = []
        for p in prompts:
            if p.chat[0]["role"] == "system" and "talking with an AI assistant" in p.chat[0]["content"]:
                turn = (len(p.chat) - 2) // 2  # role-swapped: the model writes the user's turn
                topic = p.chat[0]["content"].split("about ")[1].split(". You write")[0]
                out.append(users[min(turn, 2)].format(topic=topic))
            else:
                out.append(assistants.get(len(p.chat), "Nothing more to add here, friend."))
        return out

    out = tmp_path / "chat"
    cfg = compose_recipe("self_chat", [f"out_dir={out}", "conversations=8", "stop.max_turns=3", "eval_fraction=0"])
    manifest = synthesize(cfg, llm)
    g = manifest["generation"]
    # 8 topics, all different: every opening is kept; each chat ends at the user's "Goodbye!".
    assert g["samples"] == 8 and g["stop_stop_phrase"] == 8 and g["turns"] == 16, g
    convs = read_conversations([out / "train"])
    assert [m.role for m in convs[0].messages] == ["user", "assistant", "user", "assistant"]
    assert convs[0].meta["topic"] and convs[0].meta["stop"] == "stop_phrase"
    # 32 conversations cycle through 30 topics: the scripted user opens two of them the same way.
    again = synthesize(compose_recipe("self_chat", [f"out_dir={tmp_path / 'c2'}", "conversations=32"]), llm)
    assert again["generation"]["rejected"]["opening_exact_duplicate"] == 2
    assert again["generation"]["samples"] == 30


def _demo_captions(tmp_path, *overrides):
    return compose_recipe(
        "synth_captions",
        [
            f"out_dir={tmp_path / 'captions'}",
            f"prepare.out_dir={tmp_path / 'scenes'}",
            "prepare.n_images=6",
            "eval_fraction=0.3",
            *overrides,
        ],
    )


def test_write_outputs_keeps_images_and_parses_conversations(tmp_path):
    def llm(prompts, options):
        out = []
        for p in prompts:
            text = p.chat[-1]["content"]
            colours = text.split("descriptions of it:\n- ")[1].split("\n")[0]
            if "conversation" in text:
                out.append(f"User: What is in the picture?\nAssistant: {colours}\nUser: Anything else?\nAssistant: No.")
            else:
                out.append(f"In this picture: {colours} Everything is drawn on a plain background.")
        return out

    cfg = _demo_captions(tmp_path)
    manifest = synthesize(cfg, llm)
    g = manifest["generation"]
    assert g["samples"] == 12 and g["samples_detailed_description"] == 6 and g["samples_conversation"] == 6
    sets = manifest["sets"]
    assert sum(s["samples"] for s in sets.values()) == 12
    samples = [s for name in sets for s in read_shards(shard_urls(Path(cfg.out_dir) / name))]
    images = {p.name: p.read_bytes() for p in (tmp_path / "scenes" / "images").iterdir()}
    for sample in samples:
        assert len(sample.media) == 1 and sample.messages[0].content.startswith("<image>\n")
        source = sample.meta["from"].split("-", 1)[1]  # coco-<image id>
        assert sample.media[0].data == images[f"COCO_demo_{int(source):012d}.png"]  # original bytes
    description = next(s for s in samples if s.meta["tasks"] == ["synth_detailed_description"])
    assert description.meta["templates"][0].startswith("capd-") and description.messages[1].role == "assistant"
    dialogue = next(s for s in samples if s.meta["tasks"] == ["synth_conversation"])
    assert [m.role for m in dialogue.messages] == ["user", "assistant"] * 2
    assert dialogue.messages[0].content == "<image>\nWhat is in the picture?"
    # The same image (group) is in one split only.
    by_split = {name: {s.meta["from"] for s in read_shards(shard_urls(Path(cfg.out_dir) / name))} for name in sets}
    assert not set.intersection(*by_split.values()) if len(by_split) > 1 else True


def test_written_outputs_that_betray_the_text_source_are_rejected(tmp_path):
    manifest = synthesize(
        _demo_captions(tmp_path, "styles=[detailed_description]"),
        lambda prompts, options: ["The captions say it is a red circle on a plain white background."] * len(prompts),
    )
    g = manifest["generation"]
    assert g["samples"] == 0 and g["rejected"] == {"blocklist_detailed_description": 6}
    assert manifest["sets"] == {}


def test_llm_answers_rewrite_the_last_assistant_turn(tmp_path):
    manifest = synthesize(
        compose_recipe("llm_answers", [f"out_dir={tmp_path / 'answers'}", "eval_fraction=0"]),
        lambda prompts, options: [f"New answer to: {p.chat[-1]['content'][:30]}" for p in prompts],
    )
    seeds = load_seed_tasks(str(RECIPES_DIR / "seeds" / "self_instruct_seed_tasks.jsonl"))
    assert manifest["generation"]["samples"] == len(seeds)
    convs = read_conversations([tmp_path / "answers" / "train"])
    first = next(c for c in convs if c.meta["from"] == "seed-01")
    assert first.messages[0].content == seeds[0].instruction
    assert first.messages[1].content == f"New answer to: {seeds[0].instruction[:30]}"


@pytest.mark.parametrize("name", ["self_instruct", "synth_captions", "llm_answers", "self_chat"])
def test_recipes_compose_with_valid_options(name):
    cfg = compose_recipe(name)
    assert cfg.mode in MODES and cfg.model == ["llm=smollm2_135m"]
    for stage in cfg.generation:
        options_of(cfg, stage)


def test_a_synth_recipe_names_a_key_that_is_not_a_setting(tmp_path):
    """A synth recipe has no base: its settings are its mode's (any shipped recipe of that mode's
    keys, and checkpoint=); a typo in an override or in a copied recipe file was ignored."""
    from mmit.build import BuildError

    assert compose_recipe("self_instruct", ["checkpoint=checkpoint-00000100"]).checkpoint == "checkpoint-00000100"
    with pytest.raises(BuildError, match=r"override 'tagret=5' .*unknown key 'tagret' \(did you mean 'target'\?\)"):
        compose_recipe("self_instruct", ["tagret=5"])
    mine = tmp_path / "mine.yaml"
    text = (RECIPES_DIR / "self_chat.yaml").read_text()
    mine.write_text(text.replace("conversations:", "conversation:", 1))
    line = text[: text.index("conversations:")].count("\n") + 1
    with pytest.raises(BuildError, match=rf"mine\.yaml, line {line}: unknown key 'conversation' \(did you mean"):
        compose_recipe(str(mine))
    # a key of the recipe's own is a parameter where the recipe uses it
    mine.write_text(text.replace("seed: 0", "seed: ${my_seed}", 1) + "my_seed: 3\n")
    assert compose_recipe(str(mine), ["my_seed=4"]).seed == 4


def test_build_and_synth_refuse_each_others_recipes(tmp_path):
    from mmit.build import BuildError, build

    with pytest.raises(BuildError, match="python -m mmit.synth"):
        build(compose_recipe("self_instruct", [f"out_dir={tmp_path}"]))
    with pytest.raises(BuildError, match="built by python -m mmit.build"):
        synthesize(compose_recipe("demo_vqa", [f"out_dir={tmp_path}"]), ScriptedLLM())


def test_seed_tasks_are_diverse_and_self_instruct_layout_reads(tmp_path):
    seeds = load_seed_tasks(str(RECIPES_DIR / "seeds" / "self_instruct_seed_tasks.jsonl"))
    assert len(seeds) >= 20 and all(s.output for s in seeds)
    pool = InstructionPool(TextFilter(min_words=4, max_words=150, check_start=True), rouge_threshold=0.7)
    assert [pool.offer(s.instruction) for s in seeds] == [None] * len(seeds)  # they pass their own filters
    original = tmp_path / "seed_tasks.jsonl"  # Self-Instruct's own layout: instances
    record = {"id": "seed_task_0", "instruction": "Add the numbers.", "instances": [{"input": "2, 3", "output": "5"}]}
    original.write_text(json.dumps(record) + "\n")
    assert load_seed_tasks(str(original)) == [SeedTask("Add the numbers.", "2, 3", "5")]


# --- a real tiny model, and a training job reading its shards ----------------------------------


@pytest.mark.slow
def test_tiny_model_writes_shards_that_training_reads(tmp_path, compose):
    from mmit.synth import main
    from mmit.train import run

    loose = [
        "filters.output.min_words=1",
        "filters.output.blocklist=[]",
        "filters.output.max_repetition=1.0",
        "drop_truncated=false",  # a random model rarely ends a turn by itself
    ]
    cfg = _demo_captions(
        tmp_path,
        "model=[llm=tiny]",
        "device=cpu",
        "styles=[detailed_description]",
        "generation.detailed_description.max_new_tokens=12",
        *loose,
    )
    manifest = synthesize(cfg)
    assert manifest["generation"]["samples"] == 6 and manifest["generation"]["batches"] == {"generated": 1}
    out = Path(cfg.out_dir)
    (stored,) = [json.loads(f.read_text()) for f in (out / ".synth" / "calls").glob("*.json")]
    assert len(stored["cut"]) == 6 and all(isinstance(flag, bool) for flag in stored["cut"])
    eval_sets = [f"+data.source.eval.seen=[{out / 'val_seen'}]"] if "val_seen" in manifest["sets"] else []
    # The vqa_tiny models (its data group swapped for the shards written above).
    train_cfg = compose(
        [
            "llm=tiny",
            "vision_encoder=tiny",
            "projector=mlp",
            "data=shards",
            f"data.source.train=[{out / 'train'}]",
            *eval_sets,
            "trainer.max_steps=2",
            "trainer.batch_size=2",
            "trainer.eval_every=2",
            "trainer.eval_batches=1",
            "trainer.save_every=2",
            "trainer.generate_samples=2",
            "trainer.max_new_tokens=4",
            "trainer.precision=fp32",
        ]
    )
    summary = run(train_cfg, tmp_path / "run")
    assert summary["train_samples"] and (tmp_path / "run" / "summary.json").exists()

    # Self-Instruct from the command line: a random model writes no numbered lists; that is counted.
    main(
        [
            "self_instruct",
            f"out_dir={tmp_path / 'si'}",
            "model=[llm=tiny]",
            "device=cpu",
            "prompts_per_round=2",
            "max_rounds=1",
            "generation.propose.max_new_tokens=16",
        ]
    )
    g = json.loads((tmp_path / "si" / "manifest.json").read_text())["generation"]
    assert g["rounds"] == 1 and g["samples"] == 0
    assert g["rejected"].get("unparseable", 0) + g.get("proposed", 0) >= 2


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": 5}', r"seeds.jsonl:2: a seed task's 'instruction' must be a string, not a number"),
        ('{"instruction": "Write a poem.", "instances": "abc"}', r"seeds.jsonl:2: 'instances' must be a list"),
        ('{"instruction": "Write a poem.", "instances": [5]}', r"seeds.jsonl:2: 'instances' .*; it holds a number"),
        ('{"instruction": "Write a poem.", "output": 7}', r"seeds.jsonl:2: a seed task's 'output' must be a string"),
        ('{"instruction": "\\ud800 poem"}', r"seeds.jsonl:2: a seed task's 'instruction' holds a lone surrogate"),
        ('{"instruction": "Write', r"seeds.jsonl:2: bad JSON"),
    ],
    ids=["instruction_number", "instances_string", "instances_of_numbers", "output_number", "surrogate", "bad_json"],
)
def test_bad_seed_tasks_are_named_by_file_and_line(tmp_path, line, message):
    """Each was a traceback (AttributeError, KeyError, or a UnicodeEncodeError naming nothing once the
    first prompt was hashed), or, for bad JSON, "needs an 'instruction'"."""
    from mmit.synth.generate import BuildError

    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Name a fruit."}\n' + line + "\n")
    with pytest.raises(BuildError, match=message):
        load_seed_tasks(str(path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("- a\n- b\n", r"a mapping with 'topics' .*, not a list"),
        ("topics: cooking\n", r"'topics' must be a list of strings, not a string"),  # was read as c, o, o, ...
        ("topics: [cooking]\npersonas: a chef\n", r"'personas' must be a list of strings, not a string"),
        ("topics: [{a: 1}]\n", r"'topics' must be a list of strings; it holds an object"),
        ("topics: [a\n", r"not valid YAML"),
        ('!!python/object/apply:os.system ["true"]\n', r"not valid YAML \(could not determine a constructor"),
    ],
    ids=["a_list", "topics_string", "personas_string", "topic_object", "bad_yaml", "python_tag"],
)
def test_bad_topic_files_are_named(tmp_path, text, message):
    from mmit.synth.generate import BuildError, load_topics

    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(BuildError, match=rf"topics.yaml: {message}"):
        load_topics(str(path))
    path.write_bytes(b"topics: [caf\xe9]\n")
    with pytest.raises(BuildError, match=r"topics.yaml: not UTF-8 text"):
        load_topics(str(path))


@pytest.mark.parametrize(
    "override, message",
    [
        ("target=abc", r"target='abc': samples to write must be a whole number >= 0"),
        ("shard_size=0", r"shard_size=0: samples per shard must be a whole number >= 1"),
        ("batch_size=0", r"batch_size=0: prompts per LLM call"),
        ("eval_fraction=2", r"eval_fraction=2: .* in \[0, 1\)"),
        ("on_error=ignore", r"on_error='ignore': must be one of raise, skip"),
        ("filters.rouge_threshold=abc", r"filters.rouge_threshold='abc'"),
    ],
)
def test_settings_that_cannot_work_stop_before_anything_is_written(tmp_path, override, message):
    """A synth recipe has no schema: these ended in a TypeError or 'range() arg 3 must not be zero'
    after the LLM had run, or (on_error=ignore) were taken as written."""
    from mmit.synth.generate import BuildError

    out = tmp_path / "si"
    with pytest.raises(BuildError, match=message):
        synthesize(_self_instruct(out, override), ScriptedLLM())
    assert not out.exists()


def test_settings_and_topics_that_work_are_taken(tmp_path):
    """0 or null: no limit on a writer's turns or facts; a topic YAML reads as a number is its text."""
    from mmit.synth.generate import check_settings, load_topics

    for overrides in (["max_exchanges=0", "max_facts=null"], ["max_exchanges=null", "max_facts=0"]):
        check_settings(compose_recipe("synth_captions", overrides))
    path = tmp_path / "topics.yaml"
    path.write_text("topics: [1984, cooking]\npersonas: [a chef]\n")
    assert load_topics(str(path)) == (["1984", "cooking"], ["a chef"])
