"""Shaping options: answer-format hints (every turn or the first), the multiple-choice hint, and
where the placeholders go."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from mmit.data.annotations import QA, Annotation
from mmit.data.instructions import ShapingConfig, shape_annotation
from mmit.data.samples import MediaRef
from mmit.data.templates import load_templates
from mmit.paths import RECIPES_DIR

TEMPLATES = load_templates(RECIPES_DIR / "templates" / "vision.yaml")
SHORT_HINT = "Answer the question using a single word or phrase."
MC_HINT = "Answer with the option's letter from the given choices directly."


def _annotation() -> Annotation:
    qas = [QA(f"What is thing {i}?", [f"answer {i}"], f"answer {i}", "other", str(i), "what") for i in range(4)]
    qas.append(QA("Is it red?", ["yes"], "yes", "yes/no", "9", "is it"))
    return Annotation("a1", "test", "vqa", [MediaRef("image", "png", path="a1.png")], "a1.png", qas=qas)


def _pool() -> dict[str, list[str]]:
    return {"other": sorted(f"answer {i}" for i in range(10)), "yes/no": ["no", "yes"]}


@pytest.mark.parametrize("every_turn", [True, False])
def test_hints_on_every_turn_or_the_first_only(every_turn):
    cfg = ShapingConfig(qa_per_conversation=5, multiple_choice_fraction=0.0, hint_every_turn=every_turn)
    (conv,) = shape_annotation(_annotation(), TEMPLATES, cfg, _pool(), "train")["seen"]
    users = [m.content for m in conv.messages if m.role == "user"]
    tasks = conv.meta["tasks"]
    hinted = [SHORT_HINT in u for u in users]
    short_turns = [t == "vqa_short" for t in tasks]
    if every_turn:
        assert hinted == short_turns  # every short-answer question, no yes/no one
    else:
        assert sum(hinted) <= 1 and not any(hinted[1:])  # at most the first question
    assert conv.meta["question_types"] == [
        "what" if t == "vqa_short" else "is it" for t in tasks
    ]  # one per turn, in the conversation's order


def test_multiple_choice_hint_and_letters():
    cfg = ShapingConfig(qa_per_conversation=1, multiple_choice_fraction=1.0, multiple_choice_hint=MC_HINT)
    convs = shape_annotation(_annotation(), TEMPLATES, cfg, _pool(), "val", held_out_templates=True)["seen"]
    choices = [c for c in convs if c.meta["tasks"] == ["vqa_multiple_choice"]]
    assert len(choices) == 4
    for conv in choices:
        prompt, answer = conv.messages[0].content, conv.messages[1].content
        assert prompt.endswith(MC_HINT) and answer in "ABCD" and len(answer) == 1


def test_option_then_letter_answers_name_the_right_option():
    from mmit.metrics import listed_options

    cfg = ShapingConfig(qa_per_conversation=1, multiple_choice_fraction=1.0, choice_answer="option_letter")
    convs = shape_annotation(_annotation(), TEMPLATES, cfg, _pool(), "val", held_out_templates=True)["seen"]
    choices = [c for c in convs if c.meta["tasks"] == ["vqa_multiple_choice"]]
    assert choices
    for conv in choices:
        prompt, answer = conv.messages[0].content, conv.messages[1].content
        text, letter = answer[:-4], answer[-3:]  # "red (B)"
        assert letter[0] == "(" and letter[2] == ")" and listed_options(prompt)[letter[1]] == text
    with pytest.raises(ValueError, match="choice_answer"):
        ShapingConfig(choice_answer="text")


def test_option_then_letter_answers_never_follow_a_wording_that_asks_for_the_letter_alone():
    shipped = TEMPLATES["vqa_multiple_choice"]
    assert sum(t.letter_only for t in shipped) >= 5 and any(t.letter_only and t.held_out for t in shipped)
    drawn = {"letter": set(), "option_letter": set()}
    for form in drawn:
        cfg = ShapingConfig(qa_per_conversation=1, multiple_choice_fraction=1.0, choice_answer=form)
        for seed in range(40):
            for held_out in (False, True):
                split = "val" if held_out else "train"
                convs = shape_annotation(
                    _annotation(), TEMPLATES, dataclasses.replace(cfg, seed=seed), _pool(), split, held_out
                )["seen"]
                drawn[form] |= {c.meta["templates"][0] for c in convs if c.meta["tasks"] == ["vqa_multiple_choice"]}
    letter_only = {t.id for t in shipped if t.letter_only}
    assert drawn["letter"] & letter_only and drawn["option_letter"] and not drawn["option_letter"] & letter_only


def test_a_recipe_whose_multiple_choice_wordings_all_ask_for_the_letter_is_refused_with_option_letter(tmp_path):
    from mmit.build import BuildError
    from mmit.data.recipes import shaping_config

    path = tmp_path / "mc.yaml"
    path.write_text(
        "vqa_multiple_choice:\n"
        "  - {id: m1, text: '{question}\\n{options}'}\n"
        "  - {id: m2, text: '{question}\\n{options}\\nOnly the letter.', held_out: true, letter_only: true}\n"
    )
    templates = load_templates(path)
    shaping = {"choice_answer": "option_letter", "held_out_tasks": []}
    cfg = OmegaConf.create({"seed": 0, "eval_fraction": 0.1, "shaping": shaping})
    with pytest.raises(BuildError, match=r"every held-out vqa_multiple_choice wording .* asks for the letter alone"):
        shaping_config(cfg, templates)
    cfg.shaping.choice_answer = "letter"
    assert shaping_config(cfg, templates).choice_answer == "letter"
    cfg.eval_fraction = 0.0  # no evaluation set to word
    cfg.shaping.choice_answer = "option_letter"
    assert shaping_config(cfg, templates).choice_answer == "option_letter"


@pytest.mark.parametrize("position", ["before", "after"])
def test_media_position(position):
    cfg = ShapingConfig(qa_per_conversation=2, media_position=position)
    conv = shape_annotation(_annotation(), TEMPLATES, cfg, _pool(), "train")["seen"][0]
    first, second = conv.messages[0].content, conv.messages[2].content
    assert first.startswith("<image>\n") == (position == "before")
    assert first.endswith("\n<image>") == (position == "after")
    assert "<image>" not in second
    with pytest.raises(ValueError, match="media_position"):
        ShapingConfig(media_position="middle")


def test_wrong_options_come_from_the_same_question_type_first():
    import random

    from mmit.data.instructions import answer_pool, choice_options

    colours, shapes = ["blue", "green", "red", "yellow"], ["circle", "square", "triangle"]
    qas = [QA(f"What color is it {c}?", [c], c, "other", c, "what color is the") for c in colours]
    qas += [QA(f"What shape is it {s}?", [s], s, "other", s, "what") for s in shapes]
    pool = answer_pool([Annotation("a", "t", "vqa", [MediaRef("image", "png", path="a.png")], "a", qas=qas)])
    assert pool["other|what color is the"] == colours and pool["other"] == sorted(colours + shapes)
    for seed in range(50):
        rng = random.Random(seed)
        colour_options = choice_options(pool, qas[0], 3, rng)  # enough colours: colours only
        assert sorted(colour_options) == ["green", "red", "yellow"]
        shape_options = choice_options(pool, qas[4], 3, rng)  # two other shapes, then one of the rest
        assert len(set(shape_options)) == 3 and "circle" not in shape_options
        assert {"square", "triangle"} <= set(shape_options) and set(shape_options) - set(shapes) <= set(colours)


def test_a_type_with_just_enough_answers_gives_them_all_as_options():
    # Four answers of one type, two per question type: three wrong options need every other answer
    # of the type (drawing five of the three raised "Sample larger than population" in the build).
    import random

    from mmit.data.instructions import answer_pool, choice_options

    qas = [QA("What color?", [a], a, "other", a, "what color") for a in ("green", "red")]
    qas += [QA("What shape?", [a], a, "other", a, "what shape") for a in ("circle", "square")]
    pool = answer_pool([Annotation("a", "t", "vqa", [MediaRef("image", "png", path="a.png")], "a", qas=qas)])
    for seed in range(20):
        options = choice_options(pool, qas[0], 3, random.Random(seed))
        assert options[0] == "red" and sorted(options) == ["circle", "red", "square"]
    cfg = ShapingConfig(qa_per_conversation=1, multiple_choice_fraction=1.0)
    ann = Annotation("a", "t", "vqa", [MediaRef("image", "png", path="a.png")], "a", qas=qas)
    convs = shape_annotation(ann, TEMPLATES, cfg, pool, "train")["seen"]
    assert [c.meta["tasks"] for c in convs] == [["vqa_multiple_choice"]] * 4
