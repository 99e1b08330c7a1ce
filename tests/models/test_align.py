"""Projector pre-alignment (mmit.models.align): CTC for audio, word sets for images; synthetic features and tiny models."""

import json
import math
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from mmit.data.samples import Conversation, MediaRef, Message
from mmit.models.align import (
    CTCAligner,
    WordSetAligner,
    WordTagAligner,
    align_projector,
    align_projectors,
    edit_distance,
    informative_words,
    item_targets,
    media_texts,
    token_accuracy,
)
from mmit.models.projectors import MLPProjector, attach_position_code


def synthetic_speech(n: int, words: int, frames: int, dim: int, seed: int):
    """Clips of ``frames`` frames spelling 3-5 random words: each word is 1-3 noisy frames of its own
    code, with noisy silence around and between; returns (features [n, frames, dim], word lists)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(words, dim, generator=torch.Generator().manual_seed(99))
    feats, targets = torch.randn(n, frames, dim, generator=g) * 0.3, []
    for i in range(n):
        said = torch.randint(words, (int(torch.randint(3, 6, (1,), generator=g)),), generator=g).tolist()
        t = int(torch.randint(0, 3, (1,), generator=g))
        for w in said:
            length = int(torch.randint(1, 4, (1,), generator=g))
            feats[i, t : t + length] += codes[w]
            t += length + 1
        targets.append(said)
    return feats, targets


def test_edit_distance_and_token_accuracy():
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 3], [1, 2, 3]) == 1 and edit_distance([], [4, 5]) == 2
    assert token_accuracy([[1, 2], [7]], [[1, 2], [8]]) == pytest.approx(2 / 3)


def test_greedy_decoding_merges_repeats_and_drops_blanks():
    embeddings = torch.eye(6)
    aligner = CTCAligner(embeddings, [2, 4])
    with torch.no_grad():
        aligner.blank.copy_(torch.zeros(1, 6))
    # frames at: word 2, word 2 again (merged), blank, word 4, blank, word 4 (a second 4)
    frames = torch.stack([embeddings[2], embeddings[2], torch.zeros(6), embeddings[4], torch.zeros(6), embeddings[4]])
    assert aligner.decode(frames.unsqueeze(0)) == [[2, 4, 4]]


def test_ctc_alignment_makes_the_projector_spell_unseen_clips():
    torch.manual_seed(0)
    words, dim, hidden = 12, 16, 24
    embeddings = torch.randn(40, hidden)
    vocab = list(range(20, 20 + words))  # the words are LLM tokens 20..31
    feats, said = synthetic_speech(300, words, 20, dim, seed=1)
    held_feats, held_said = synthetic_speech(60, words, 20, dim, seed=2)
    projector = MLPProjector(dim, hidden)
    untrained = CTCAligner(embeddings, vocab)
    with torch.no_grad():
        before = token_accuracy(untrained.decode(projector(held_feats)), [[vocab[w] for w in s] for s in held_said])
    aligner = CTCAligner(embeddings, vocab)
    align_projector(projector, aligner, feats, [[vocab[w] for w in s] for s in said], steps=200, lr=1e-2)
    with torch.no_grad():
        after = token_accuracy(aligner.decode(projector(held_feats)), [[vocab[w] for w in s] for s in held_said])
    assert before < 0.3 and after > 0.9, (before, after)
    # the spelled words sit next to the LLM's own embeddings of them
    with torch.no_grad():
        out = projector(held_feats[:1])[0]
    nearest = torch.cdist(out, torch.cat([aligner.blank.detach(), embeddings[vocab]])).argmin(1)
    assert any(int(c) > 0 for c in nearest)


def test_media_texts_take_the_answers_of_caption_and_transcription_turns_about_one_item():
    clip = MediaRef("audio", "wav", data=b"x")
    convs = [
        Conversation(
            "t",
            [Message("user", "<audio>\nTranscribe."), Message("assistant", "the red cup")],
            {"tasks": ["audio_transcription"]},
            [clip],
        ),
        Conversation(
            "q", [Message("user", "<audio>\nColour?"), Message("assistant", "red")], {"tasks": ["audio_qa"]}, [clip]
        ),
        Conversation(
            "2",
            [Message("user", "<audio>\n<audio>\nT."), Message("assistant", "a b")],
            {"tasks": ["audio_transcription"]},
            [clip, clip],
        ),
    ]
    assert media_texts(convs, "audio") == [(clip, "the red cup")]
    image = MediaRef("image", "png", data=b"i")
    mixed = Conversation(
        "m",
        [Message("user", "<image>\nDescribe."), Message("assistant", "A red cup."), Message("user", "Colour?"),
         Message("assistant", "red"), Message("user", "Again?"), Message("assistant", "A cup, red.")],
        {"tasks": ["caption_brief", "vqa_short", "caption_brief"]},
        [image],
    )  # fmt: skip
    assert media_texts([mixed], "image") == [(image, "A red cup."), (image, "A cup, red.")]
    assert media_texts([mixed], "audio") == []


def synthetic_scenes(n: int, words: int, cells: int, dim: int, seed: int):
    """Images of ``cells`` feature tokens showing 1-3 random words: each word fills 1-2 cells with
    its own (noisy) code, the rest is noise; returns (features [n, cells, dim], word lists)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(words, dim, generator=torch.Generator().manual_seed(98))
    feats, shown = torch.randn(n, cells, dim, generator=g) * 0.3, []
    for i in range(n):
        chosen = torch.randperm(words, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))].tolist()
        free = torch.randperm(cells, generator=g).tolist()
        for w in chosen:
            for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
                feats[i, free.pop()] += codes[w]
        shown.append(chosen)
    return feats, shown


@pytest.mark.slow
def test_word_set_alignment_makes_the_projector_name_what_unseen_images_show():
    torch.manual_seed(0)
    words, dim, hidden = 10, 16, 24
    embeddings = torch.randn(40, hidden)
    vocab = list(range(5, 5 + words))
    feats, shown = synthetic_scenes(400, words, 16, dim, seed=1)
    held_feats, held_shown = synthetic_scenes(100, words, 16, dim, seed=2)
    targets = [[vocab[w] for w in s] for s in shown]
    held = [[vocab[w] for w in s] for s in held_shown]
    projector = MLPProjector(dim, hidden)
    aligner = WordSetAligner(embeddings, vocab)
    with torch.no_grad():
        before = aligner.score(aligner.decode(projector(held_feats)), held)["f1"]
    align_projector(projector, aligner, feats, targets, steps=600, lr=1e-2)
    with torch.no_grad():
        after = aligner.score(aligner.decode(projector(held_feats)), held)
    assert before < 0.4 and after["f1"] > 0.9, (before, after)
    # a token that names a word lies nearest that word's LLM embedding
    with torch.no_grad():
        out = projector(held_feats[:1])[0]
    nearest = torch.cdist(out, torch.cat([aligner.blank.detach(), embeddings[vocab]])).argmin(1)
    assert {vocab[int(c) - 1] for c in nearest if int(c) > 0} == set(held[0])


def synthetic_objects(n: int, colours: int, shapes: int, cells: int, dim: int, seed: int):
    """Images of ``cells`` feature tokens showing 1-3 objects, each a (colour, shape) in a cell of its
    own whose features are the colour's code plus the shape's; returns (features, [(colour, shape), ...]
    per image, the cell of each object)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(colours + shapes, dim, generator=torch.Generator().manual_seed(97))
    feats, objects, where = torch.randn(n, cells, dim, generator=g) * 0.3, [], []
    for i in range(n):
        count = int(torch.randint(1, 4, (1,), generator=g))
        cs = torch.randint(colours, (count,), generator=g).tolist()
        ss = torch.randint(shapes, (count,), generator=g).tolist()
        free = torch.randperm(cells, generator=g).tolist()[:count]
        for c, sh, cell in zip(cs, ss, free, strict=True):
            feats[i, cell] += codes[c] + codes[colours + sh]
        objects.append(list(zip(cs, ss, strict=True)))
        where.append(free)
    return feats, objects, where


@pytest.mark.slow
def test_several_words_per_token_let_one_token_say_an_objects_colour_and_shape():
    """``image_words: several``: the token showing a red circle says " red" and " circle" (with
    ``one``, a softmax, no token can say two words, so the colour and the shape come apart)."""
    torch.manual_seed(0)
    colours, shapes, dim, hidden = 5, 5, 16, 24
    embeddings = torch.randn(40, hidden)
    vocab = list(range(10, 10 + colours + shapes))

    def words(objects):
        return sorted({vocab[c] for c, _ in objects} | {vocab[colours + sh] for _, sh in objects})

    feats, objects, _ = synthetic_objects(500, colours, shapes, 9, dim, seed=1)
    held_feats, held_objects, held_where = synthetic_objects(100, colours, shapes, 9, dim, seed=2)
    projector = MLPProjector(dim, hidden)
    aligner = WordTagAligner(embeddings, vocab)
    align_projector(projector, aligner, feats, [words(o) for o in objects], steps=400, lr=1e-2)
    with torch.no_grad():
        projected = projector(held_feats)
        scores = aligner.score(aligner.decode(projected), [words(o) for o in held_objects])
        says = aligner.token_says(projected)
    assert scores["f1"] > 0.9, scores
    both = [
        bool(says[i, cell, c] > 0.5 and says[i, cell, colours + sh] > 0.5)
        for i in range(len(held_objects))
        for (c, sh), cell in zip(held_objects[i], held_where[i], strict=True)
    ]
    assert sum(both) / len(both) > 0.75, sum(both) / len(both)


def test_word_tag_probabilities_by_hand():
    """sigmoid(scale * cosine + bias), starting at scale 10 and bias -10; a token's length does not count."""
    embeddings = torch.zeros(4, 2)
    embeddings[1], embeddings[3] = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 5.0])
    aligner = WordTagAligner(embeddings, [3, 1])
    assert aligner.vocabulary == [1, 3]
    tokens = torch.tensor([[[7.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]])
    half = 10 * 2**-0.5 - 10
    expected = torch.sigmoid(torch.tensor([[0.0, -10.0], [half, half], [-20.0, -10.0]]))
    torch.testing.assert_close(aligner.token_says(tokens)[0], expected)
    assert aligner.decode(tokens) == [[1]]  # word 1: 1 - (1 - 1/2)(1 - s(-2.9))(1 - ...) > 1/2; word 3 not
    with torch.no_grad():
        aligner.bias.fill_(5.0)
    assert aligner.decode(tokens) == [[1, 3]]  # the token between them says both
    assert [p.shape for p in aligner.parameters()] == [torch.Size([]), torch.Size([])]


def test_word_set_loss_and_decoding_by_hand():
    embeddings = torch.eye(4) * 10
    aligner = WordSetAligner(embeddings, [1, 3])
    with torch.no_grad():
        aligner.blank.copy_(torch.zeros(1, 4))
    tokens = torch.stack([embeddings[3], torch.zeros(4)]).unsqueeze(0)  # one token says word 3, one says nothing
    assert aligner.decode(tokens) == [[3]]
    assert aligner.score([[3], [1, 3]], [[3], [3, 2]]) == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8})
    with torch.no_grad():
        assert float(aligner.loss(tokens, [[3]])) < 1e-3 < float(aligner.loss(tokens, [[1]]))


def test_word_targets_are_per_image_and_skip_words_every_image_has():
    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [len(w) for w in text.split()]}  # a word's id: its length

    a, b = MediaRef("image", "png", data=b"a"), MediaRef("image", "png", data=b"b")
    refs, targets = item_targets([(a, "x yyy"), (b, "x zz"), (a, "x yyyy")], Tok(), "words")
    assert refs == [a, b] and targets == [[1, 3, 4], [1, 2]]
    refs, targets = item_targets([(a, "x yyy"), (b, "x zz")], Tok(), "ctc")
    assert refs == [a, b] and targets == [[1, 3], [1, 2]]
    many = [[1, 2], [1, 2], [1, 3], [1, 3], [1, 2, 3]]
    assert sorted(informative_words(many, max_share=0.9, min_items=2)) == [2, 3]  # 1 is in every image


def audio_demo_missing() -> bool:
    return shutil.which("espeak-ng") is None or shutil.which("sox") is None


@pytest.mark.parametrize(
    "recipe, kind, image_words, objective",
    [
        pytest.param(
            "audio_qa_tiny",
            "audio",
            "one",
            "ctc",
            marks=pytest.mark.skipif(audio_demo_missing(), reason="the audio demo needs espeak-ng and sox"),
        ),
        ("vqa_tiny", "image", "one", "words"),
        ("vqa_tiny", "image", "several", "word_tags"),
    ],
)
@pytest.mark.slow
def test_projector_align_step_on_a_tiny_recipe(compose, tmp_path, recipe, kind, image_words, objective):
    from mmit.factory import build_data, build_model

    cfg = compose(
        [
            f"+recipe={recipe}",
            "+projector_align.steps=20",
            "+projector_align.lr=1e-2",
            f"+projector_align.image_words={image_words}",
        ]
    )
    built = build_model(cfg)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    projector = built.model.projectors[kind]
    before = {k: v.clone() for k, v in projector.state_dict().items()}
    results = align_projectors(cfg.projector_align, built.model, built.tokenizer, data, None, tmp_path)
    result = results[kind]
    assert result["steps"] == 20 and result["items"] > 0 and result["objective"] == objective
    assert set(result["heldout"]) == {n for n, e in data.eval.items() if media_texts(e.conversations, kind)}
    assert json.loads((tmp_path / "projector_align.json").read_text()) == results
    assert any(not torch.equal(before[k], v) for k, v in projector.state_dict().items())
    # a run that resumes, or starts from init_from, keeps those weights
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-0000001")
    (tmp_path / "checkpoints" / "step-0000001").mkdir()
    assert align_projectors(cfg.projector_align, built.model, built.tokenizer, data, None, tmp_path) == {}
    assert align_projectors(OmegaConf.create({}), built.model, built.tokenizer, data, None, None, "run") == {}


def test_run_summary_says_what_the_alignment_did(tmp_path):
    from mmit.training.report import format_summary

    summary = {
        "llm": "tiny", "steps": 3, "resumed_from_step": 0, "device": "cpu", "precision": "fp32",
        "train_seconds": 1.0, "tokens_per_second": 10.0, "train_samples": "12 samples", "final_train_loss": 1.0,
        "skipped": {}, "truncated": {}, "parameters": "-", "before": {}, "after": {},
        "projector_align": {
            "image": {"objective": "words", "items": 40, "steps": 20, "seconds": 2.0,
                      "heldout": {"heldout_templates": {"items": 8, "precision": 0.5, "recall": 0.25, "f1": 1 / 3}}},
        },
    }  # fmt: skip
    text = format_summary(summary, tmp_path)
    assert "- image projector aligned first (words): 40 items, 20 steps, 2 s; before the LLM trained: " in text
    assert "heldout_templates precision 0.500, recall 0.250, f1 0.333 (8 items)" in text


def test_projector_align_reads_a_streamed_set_and_caps_its_items(compose):
    from mmit.factory import build_data, build_model

    cfg = compose(["+recipe=vqa_tiny", "data.stream=true", "+projector_align.steps=5", "+projector_align.max_items=7"])
    built = build_model(cfg)
    data = build_data(cfg, built.tokenizer, list(built.model.slots.values()))
    assert data.train_conversations is None
    result = align_projectors(cfg.projector_align, built.model, built.tokenizer, data)["image"]
    assert result["items"] == 7 and result["steps"] == 5


def test_the_alignment_trains_the_projector_without_its_position_code():
    """Captions say what an image shows, not which token shows it: the code is neither used nor
    changed by the alignment, and is back in place for the LLM afterwards."""
    torch.manual_seed(0)
    embeddings = torch.randn(40, 24)
    vocab = list(range(5, 15))
    feats, shown = synthetic_scenes(64, 10, 16, 16, seed=1)
    projector = MLPProjector(16, 24)
    code = attach_position_code(projector, 16, 24, init=torch.randn(16, 24))
    before = code.code.detach().clone()
    aligner = WordSetAligner(embeddings, vocab)
    seen = []
    projector.register_forward_hook(lambda module, inputs, output: seen.append(module.position_code.enabled))
    align_projector(projector, aligner, feats, [[vocab[w] for w in s] for s in shown], steps=5, lr=1e-2)
    assert seen == [False] * 5 and code.enabled
    assert torch.equal(code.code, before)
    with torch.no_grad():
        torch.testing.assert_close(projector(feats[:2]), projector.mlp(feats[:2]) + before)


def test_align_probe_reads_each_objects_own_token(tool):
    """tools/align_probe.py: the token of the cell holding an object's centre must say its colour and shape."""
    from types import SimpleNamespace

    probe = tool("align_probe")
    assert [probe.cell_of(c, 224, 3) for c in [(0, 0), (223, 0), (112, 112), (74, 150), (223, 223)]] == [0, 2, 4, 6, 8]

    class Tok:  # each word is its own token: red 1, blue 2, circle 3, square 4
        ids = {"red": 1, "blue": 2, "circle": 3, "square": 4}

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [self.ids[w] for w in text.split()]}

    aligner = SimpleNamespace(index={1: 1, 2: 2, 3: 3})  # "square" is not in the vocabulary
    scene = SimpleNamespace(
        image_size=224,
        objects=[
            SimpleNamespace(color="red", shape="circle", center=(10, 10)),  # cell 0
            SimpleNamespace(color="blue", shape="circle", center=(200, 200)),  # cell 8
            SimpleNamespace(color="blue", shape="square", center=(112, 10)),  # not counted
        ],
    )
    says = torch.zeros(1, 9, 3)
    says[0, 0, 0] = says[0, 0, 2] = 0.9  # cell 0 says red and circle
    says[0, 8, 1] = 0.9  # cell 8 says blue only; circle is said by another cell
    says[0, 4, 2] = 0.9
    assert probe.object_binding(aligner, says, [scene], 3, Tok()) == {
        "objects": 2, "colour": 1.0, "shape": 0.5, "both": 0.5,
    }  # fmt: skip


@pytest.mark.parametrize("steps", [1, 9, 10, 11])
def test_any_number_of_alignment_steps_runs(steps):
    """OneCycleLR divides by zero when its warm-up is exactly one step (a tenth of 10 steps)."""
    torch.manual_seed(0)
    feats, shown = synthetic_scenes(16, 10, 16, 8, seed=1)
    vocab = list(range(5, 15))
    projector = MLPProjector(8, 24)
    loss = align_projector(
        projector,
        WordSetAligner(torch.randn(40, 24), vocab),
        feats,
        [[vocab[w] for w in s] for s in shown],
        steps=steps,
    )
    assert math.isfinite(loss)
