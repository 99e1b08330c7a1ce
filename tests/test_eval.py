"""Scoring by task / template / set, the eval CLI's outputs, decoding options and the chat CLI."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmit.data.samples import SampleError
from mmit.scoring import Prediction, flat_metrics, score_predictions, task_metrics

TEN = ["2"] * 2 + ["3"] * 6 + ["4"] * 2  # ten human answers, normalised as VQAv2 ships them


def _p(set_name, task, template, prediction, reference, references=None):
    return Prediction(
        set_name, f"{task}-{template}", task, template, "q", reference, references or [reference], prediction
    )


def test_vqa_scores_use_every_human_answer():
    preds = [_p("seen", "vqa_short", "t1", "Two.", "three", TEN), _p("seen", "vqa_short", "t1", "three", "three", TEN)]
    m = task_metrics("vqa_short", preds)
    # "Two." normalises to "2": 2 of 10 answers match; leaving out one of the 8 others keeps both
    # (2/3), leaving out a match keeps one (1/3): (8 * 2/3 + 2 * 1/3) / 10 = 0.6. "three" -> "3": 1.0
    assert m["vqa_accuracy"] == pytest.approx((0.6 + 1.0) / 2)
    assert m["exact_match"] == 0.5 and m["n"] == 2
    assert list(m)[0] == "vqa_accuracy"  # the headline comes first


def test_vqa_normalisation_is_chosen_and_recorded():
    # Ten identical answers: the official script compares "Two" with "2" as written (0), lmms-eval
    # normalises both (1); differing answers are normalised under both.
    preds = [_p("seen", "vqa_short", "t", "Two", "2", ["2"] * 10), _p("seen", "vqa_short", "t", "Two.", "3", TEN)]
    official = score_predictions(preds)
    lmms = score_predictions(preds, vqa_normalisation="lmms_eval")
    assert official["vqa_normalisation"] == "official" and lmms["vqa_normalisation"] == "lmms_eval"
    assert official["sets"]["seen"]["vqa_accuracy"] == pytest.approx((0.0 + 0.6) / 2)
    assert lmms["sets"]["seen"]["vqa_accuracy"] == pytest.approx((1.0 + 0.6) / 2)
    assert lmms["tasks"]["seen"]["vqa_short"]["vqa_accuracy"] == pytest.approx(0.8)
    assert all(isinstance(v, float) for v in flat_metrics(lmms).values())
    with pytest.raises(ValueError, match="official, lmms_eval"):
        score_predictions(preds, vqa_normalisation="lmms")


def test_eval_takes_the_normalisation_from_the_flag_then_the_run():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from mmit.eval import parse_args, vqa_normalisation_of

    def loaded(trainer):
        return SimpleNamespace(cfg=OmegaConf.create({"trainer": trainer}))

    assert vqa_normalisation_of(loaded({}), None) == "official"
    assert vqa_normalisation_of(loaded({"vqa_normalisation": "lmms_eval"}), None) == "lmms_eval"
    assert vqa_normalisation_of(loaded({"vqa_normalisation": "lmms_eval"}), "official") == "official"
    with pytest.raises(ValueError):
        vqa_normalisation_of(loaded({"vqa_normalisation": "lmms"}), None)
    assert parse_args(["run", "--vqa-normalisation", "lmms_eval"]).vqa_normalisation == "lmms_eval"
    with pytest.raises(SystemExit):
        parse_args(["run", "--vqa-normalisation", "lmms"])


def test_yes_no_multiple_choice_caption_and_text_tasks():
    yn = task_metrics("vqa_yesno", [_p("s", "vqa_yesno", "t", "Yes", "yes"), _p("s", "vqa_yesno", "t", "no", "yes")])
    assert yn["yes_no_accuracy"] == 0.5
    mc = task_metrics(
        "vqa_multiple_choice",
        [_p("s", "vqa_multiple_choice", "t", "B", "B"), _p("s", "vqa_multiple_choice", "t", "C.", "B")],
    )
    assert mc == {"accuracy": 0.5, "option_accuracy": 0.5, "n": 2}  # no options listed: "C." names C
    caps = ["a red square on a white background", "two blue circles"]
    cap = task_metrics("caption_brief", [_p("s", "caption_brief", "t", c, c, [c, "something else"]) for c in caps])
    assert list(cap)[:3] == ["cider_d", "bleu_4", "rouge_l"] and cap["rouge_l"] == pytest.approx(1.0)
    text = task_metrics("arithmetic", [_p("s", "arithmetic", "t", "the answer is 12", "12")])
    # ROUGE-L on words: LCS 1, precision 1/4, recall 1; F with beta 1.2
    p, r, b2 = 0.25, 1.0, 1.2**2
    assert text["rouge_l"] == pytest.approx((1 + b2) * p * r / (r + b2 * p)) and text["exact_match"] == 0.0


def test_scores_group_by_set_task_and_template_and_report_the_gap():
    preds = [
        _p("seen", "vqa_short", "a", "3", "3"),
        _p("seen", "vqa_short", "b", "3", "3"),
        _p("seen", "caption_brief", "c", "a red square", "a red square"),
        _p("heldout_templates", "vqa_short", "h", "4", "3"),
        _p("heldout_templates", "vqa_short", "h", "3", "3"),
        _p("heldout_tasks", "caption_detailed", "c", "a square", "a big red square"),
    ]
    scores = score_predictions(preds)
    assert scores["sets"]["seen"]["n"] == 3 and scores["sets"]["heldout_templates"]["vqa_accuracy"] == 0.5
    assert set(scores["templates"]["seen"]["vqa_short"]) == {"a", "b"}
    assert scores["templates"]["heldout_templates"]["vqa_short"]["h"]["n"] == 2
    gap = scores["gaps"]["heldout_templates"]["vqa_short"]
    assert (gap["seen"], gap["heldout"], gap["gap"]) == (1.0, 0.5, 0.5)
    # A held-out task is compared with the seen tasks of its family that share its metric.
    detailed = scores["gaps"]["heldout_tasks"]["caption_detailed"]
    assert detailed["metric"] == "cider_d" and detailed["compared_with"] == "seen caption_brief"
    flat = flat_metrics(scores)
    assert flat["eval/heldout_templates/vqa_short/vqa_accuracy"] == 0.5 and "eval/seen/score" in flat
    assert all(isinstance(v, float) for v in flat.values())


def test_generation_options_are_checked_and_reach_generate(tiny):
    from mmit.data.samples import Conversation, Message
    from mmit.generation import GenerationOptions, generate_answers
    from mmit.models.multimodal_lm import MultimodalLM

    with pytest.raises(ValueError, match="not both"):
        GenerationOptions(num_beams=2, do_sample=True)
    model = MultimodalLM(tiny.model)
    convs = [
        Conversation(str(i), [Message("user", q), Message("assistant", "x")])
        for i, q in enumerate(["one two", "three", "four five six"])
    ]
    greedy = generate_answers(model, tiny.tokenizer, convs, GenerationOptions(6))
    assert generate_answers(model, tiny.tokenizer, convs, GenerationOptions(6, num_beams=1)) == greedy
    beams = generate_answers(model, tiny.tokenizer, convs, GenerationOptions(6, num_beams=3))
    assert len(beams) == 3 and all(isinstance(b, str) for b in beams)
    sampled = [
        generate_answers(model, tiny.tokenizer, convs, GenerationOptions(6, do_sample=True, seed=s)) for s in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1]  # reseeded per call: reproducible
    hot = GenerationOptions(6, do_sample=True, temperature=5.0, seed=3)
    assert generate_answers(model, tiny.tokenizer, convs, hot) != greedy  # sampling really samples


def test_each_task_answers_within_its_own_length(tiny):
    """trainer.max_new_tokens={default: 2, caption_brief: 7}: a caption may run to 7 new tokens while a
    short answer stops at 2, each the answer it gets alone with its own limit."""
    from mmit.data.samples import Conversation, Message
    from mmit.generation import GenerationOptions, generate_answers, predict
    from mmit.models.multimodal_lm import MultimodalLM

    model = MultimodalLM(tiny.model)
    asked = [
        ("one two", "caption_brief"),
        ("three", "vqa_short"),
        ("four five six", "caption_brief"),
        ("7", "vqa_yesno"),
    ]
    convs = [
        Conversation(str(i), [Message("user", q), Message("assistant", "x")], meta={"tasks": [task]})
        for i, (q, task) in enumerate(asked)
    ]
    options = GenerationOptions.from_setting({"default": 2, "caption_brief": 7})
    assert (options.max_new_tokens, options.task_max_new_tokens) == (2, {"caption_brief": 7})
    assert options.limits() == "up to 2 new tokens (caption_brief 7)"
    assert GenerationOptions.from_setting(5).limits() == "up to 5 new tokens"
    with pytest.raises(ValueError, match="at least 1"):
        GenerationOptions.from_setting({"default": 2, "caption_brief": 0})

    predictions = predict(model, tiny.tokenizer, "s", convs, options, references=[[1, 2]] * 4, batch_size=1)
    assert [p.id for p in predictions] == ["0", "1", "2", "3"]  # in the order asked, whatever the groups
    for conv, p in zip(convs, predictions, strict=True):
        limit = 7 if p.task == "caption_brief" else 2
        assert p.prediction == generate_answers(model, tiny.tokenizer, [conv], GenerationOptions(limit))[0]
        assert p.loss is not None and p.label_tokens == 2
        assert (p.yes_no_margin is not None) == (p.task == "vqa_yesno")
    captions = [c for c in convs if c.meta["tasks"] == ["caption_brief"]]
    short = generate_answers(model, tiny.tokenizer, captions, GenerationOptions(2))
    assert short != [p.prediction for p in predictions if p.task == "caption_brief"]  # the longer limit mattered


def test_eval_answers_as_long_as_the_run_did_unless_told():
    from mmit.eval import generation_options, parse_args

    per_task = {"default": 12, "caption_brief": 40}
    assert generation_options(parse_args(["run"]), per_task).limits() == "up to 12 new tokens (caption_brief 40)"
    assert generation_options(parse_args(["run", "--max-new-tokens", "5"]), per_task).limits() == "up to 5 new tokens"
    assert generation_options(parse_args(["run"]), None).limits() == "up to 32 new tokens"
    with pytest.raises(SystemExit):  # a batch of no prompts would answer nothing
        parse_args(["run", "--batch-size", "0"])


@pytest.fixture
def vqa_run(tiny_vqa_run):
    return tiny_vqa_run


@pytest.mark.slow
def test_training_logs_in_loop_scores_tensorboard_and_curves(vqa_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = vqa_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    in_loop = [r for r in records if r["step"] == 2 and "eval/seen/loss" in r]
    assert in_loop and "eval/seen/score" in in_loop[0]
    assert any(k.startswith("eval/seen/vqa_") and k.count("/") == 3 for k in in_loop[0])  # per-task scores
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert Image.open(run_dir / "training_curves.png").size[0] > 300
    assert Image.open(run_dir / "grounding.png").size[0] > 300  # the run's own grounding figures, drawn


@pytest.mark.slow
def test_eval_cli_writes_every_output(vqa_run, tmp_path):
    from mmit.eval import main

    run_dir, _ = vqa_run
    out = main([str(run_dir), "--max-samples", "5", "--max-new-tokens", "4"])
    assert out == run_dir / "eval" / "step-0000004"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["scores"]["sets"]) == {"seen", "heldout_templates", "heldout_tasks"}
    assert metrics["checkpoint"].endswith("step-0000004") and metrics["decoding"] == "greedy"
    assert metrics["vqa_normalisation"] == metrics["scores"]["vqa_normalisation"] == "official"
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    counts = {name: s["n"] for name, s in metrics["scores"]["sets"].items()}
    per_task = {name: [t["n"] for t in tasks.values()] for name, tasks in metrics["scores"]["tasks"].items()}
    assert all(0 < n <= 5 for ns in per_task.values() for n in ns)  # --max-samples is per task
    assert all(counts[name] == sum(ns) for name, ns in per_task.items())
    assert len(preds) == sum(counts.values()) and {p["set"] for p in preds} == set(counts)
    # Every sample with an image was also answered with another sample's image, and scored beside the prior.
    assert all("prediction_swapped_media" in p for p in preds)
    yes_no = [p for p in preds if p["task"] == "vqa_yesno"]  # and a yes/no answer's margin, both ways
    assert yes_no and all(isinstance(p["yes_no_margin_swapped_media"], float) for p in yes_no)
    assert all((p["yes_no_margin"] is None) == (p["task"] != "vqa_yesno") for p in preds)
    grounding = metrics["scores"]["grounding"]
    assert set(grounding) == set(counts)
    for set_name, tasks in grounding.items():
        for g in tasks.values():
            assert g["n_swapped"] == g["n"] and "dependence" in g and "loss_swapped_media" in g
            # A held-out task has no training answers, so no blind prior.
            assert ("prior" in g) == (set_name != "heldout_tasks")
    report = (out / "report.md").read_text()
    assert "- vqa_normalisation: official" in report
    for heading in ("## Sets", "## Does it look?", "## Tasks", "## Seen vs held-out", "## Templates", "![task_scores]"):
        assert heading in report
    for png in ("task_scores.png", "training_curves.png", "grounding.png"):
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    # The same prompts as training's in-loop evaluation, the same model: the same reference losses,
    # up to the feature cache's bf16 rounding (the in-loop evaluation reads the cache, mmit.eval runs
    # the encoder). (Not always the same greedy text: a random tiny model has near-tied logits, which
    # float sums over other batch paddings can flip.)
    after = json.loads((run_dir / "answers_after.json").read_text())["seen"]
    again = main(
        [str(run_dir), "--only", "seen", "--max-samples", "4", "--max-new-tokens", "6", "--out", str(tmp_path / "e")]
    )
    again_preds = [json.loads(line) for line in (again / "predictions.jsonl").read_text().splitlines()]
    assert [(p["id"], p["prompt"]) for p in again_preds] == [(a["id"], a["prompt"]) for a in after]
    losses = [(p["loss"], a["loss"]) for p, a in zip(again_preds, after, strict=True)]
    assert all(abs(x - y) <= 1e-3 * max(1.0, abs(y)) for x, y in losses), losses
    # Reading the run's feature cache instead, mmit.eval sees the in-loop evaluation's exact inputs.
    cached = main(  # and, without --max-new-tokens, the run's own answer lengths (the tiny recipe's 6)
        [str(run_dir), "--only", "seen", "--max-samples", "4", "--out", str(tmp_path / "c"), "--feature-cache", "auto"]
    )
    cached_preds = [json.loads(line) for line in (cached / "predictions.jsonl").read_text().splitlines()]
    losses = [(p["loss"], a["loss"]) for p, a in zip(cached_preds, after, strict=True)]
    assert all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in losses), losses
    cached_info = json.loads((cached / "metrics.json").read_text())
    assert cached_info["media"] == "feature cache: auto" and cached_info["answer_lengths"] == "up to 6 new tokens"
    assert cached_info["batch_size"] == 3  # the run's trainer.eval_batch_size, as its in-loop answers were batched


@pytest.mark.slow
def test_eval_of_base_model_extra_sets_and_beam_search(vqa_run, tmp_path, monkeypatch):
    from mmit.eval import main

    run_dir, overrides = vqa_run
    shards = run_dir.parent / "demo" / "val_seen"  # the build the run used (its data.source out_dir)
    out = main(
        [
            "--base",
            *overrides,
            "--only",
            "mine",
            "--sets",
            f"mine={shards}",
            "--max-samples",
            "3",
            "--num-beams",
            "2",
            "--max-new-tokens",
            "3",
            "--vqa-normalisation",
            "lmms_eval",
            "--out",
            str(tmp_path / "base"),
        ]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vqa_normalisation"] == metrics["scores"]["vqa_normalisation"] == "lmms_eval"
    assert metrics["checkpoint"].startswith("none") and metrics["decoding"] == "beam search (2 beams)"
    assert max(t["n"] for t in metrics["scores"]["tasks"]["mine"].values()) == 3  # --max-samples per task
    assert metrics["scores"]["grounding"]["mine"]  # a base model is measured for grounding too (its prior read)
    assert not (out / "training_curves.png").exists()  # a base model has no training curves

    def no_model(*_):
        raise AssertionError("the model was built before --only was checked")

    monkeypatch.setattr("mmit.factory.build_model", no_model)
    with pytest.raises(
        SystemExit, match=r"--only nope: this evaluation .* has no such set.*; its sets: "
    ):  # before the model loads
        main([str(run_dir), "--only", "nope"])


@pytest.mark.slow
def test_chat_one_shot_and_interactive(vqa_run, tmp_path, capsys):
    from mmit.chat import interact, main
    from mmit.data.media import media_ref
    from mmit.generation import GenerationOptions
    from mmit.inference import ChatSession, load_run

    run_dir, _ = vqa_run
    png = tmp_path / "red.png"
    Image.new("RGB", (40, 40), "red").save(png)
    main([str(run_dir), "--image", str(png), "--max-new-tokens", "5", "What colour is this?"])
    printed = capsys.readouterr().out.strip()
    session = ChatSession(load_run(run_dir), GenerationOptions(5))
    assert printed == session.ask("What colour is this?", [media_ref(png)])
    assert session.chat[0]["content"] == "<image>\nWhat colour is this?" and len(session.media) == 1

    lines = iter([f"/image {png}", "What is it?", "/audio nothing.txt", "And now?", "/reset", "/quit"])
    shown = []
    interact(ChatSession(load_run(run_dir), GenerationOptions(5)), read=lambda _: next(lines), write=shown.append)
    assert shown[1] == f"(attached {png})" and shown[2].startswith("assistant> ")
    assert shown[3].startswith("error: ") and "unknown media type" in shown[3]
    assert shown[4].startswith("assistant> ") and shown[5] == "(new conversation)"

    # a placeholder with nothing attached, and an image whose header reads over data that does not
    with pytest.raises(ValueError, match=r"1 <image> placeholder\(s\) for 0 attached image file\(s\) \(attach one"):
        session.ask("<image> And this one?")
    with pytest.raises(ValueError, match="the message is not UTF-8 text"):
        session.ask("caf\udce9?")  # how Python's argv holds a Latin-1 byte
    cut = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "red").save(cut)
    cut.write_bytes(cut.read_bytes()[:-60])
    with pytest.raises(SampleError, match=r"cut\.png: image does not decode"):
        session.ask("What colour?", [media_ref(cut)])


def test_media_errors_are_clear(tiny, tmp_path):
    from mmit.data.media import media_ref
    from mmit.inference import ChatSession, LoadedModel
    from mmit.models.multimodal_lm import MultimodalLM

    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(png)
    loaded = LoadedModel(MultimodalLM(tiny.model), tiny.tokenizer, None, torch.device("cpu"), "fp32", None)
    with pytest.raises(ValueError, match="no image encoder"):
        ChatSession(loaded).ask("hi", [media_ref(png)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        media_ref(tmp_path / "missing.png")


@pytest.mark.slow
def test_eval_cli_scores_standard_benchmarks(vqa_run, tmp_path, monkeypatch):
    """--benchmark alone: only the benchmarks run, each scored by its official metric with images
    given and swapped; a set without references gets its EvalAI submission file instead."""
    from mmit.benchmarks import load_benchmark
    from mmit.eval import main

    fixtures = Path(__file__).resolve().parent / "benchmarks" / "fixtures"
    run_dir, _ = vqa_run
    argv = [str(run_dir), "--out", str(tmp_path / "bench"), "--max-new-tokens", "3"]
    argv += ["--benchmark", f"pope={fixtures / 'pope'}", "--benchmark", f"vqav2_testdev={fixtures / 'vqav2'}"]
    out = main(argv)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"]["sets"] == {} and set(metrics["benchmarks"]) == {"pope", "vqav2_testdev"}
    pope = metrics["scores"]["benchmarks"]["pope"]
    n_pope = len(load_benchmark("pope", fixtures / "pope").samples)
    assert pope["n"] == n_pope and set(pope["tables"]["split"]) == {"random", "popular", "adversarial"}
    assert pope["headline"] in pope["metrics"] and set(pope["swapped_media"]) == set(pope["metrics"])
    assert pope["dependence"] == pytest.approx(
        pope["metrics"][pope["headline"]] - pope["swapped_media"][pope["headline"]]
    )
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    n_testdev = len(load_benchmark("vqav2_testdev", fixtures / "vqav2").samples)
    assert len(preds) == n_pope + n_testdev
    rows = json.loads((out / "vqav2_testdev_submission.json").read_text())
    assert {"question_id", "answer"} == set(rows[0]) and len(rows) >= n_testdev
    report = (out / "report.md").read_text()
    assert "## Benchmarks" in report and "### pope" in report and "vqav2_testdev_submission.json" in report
    with Image.open(out / "benchmarks.png") as image:
        assert image.size[0] > 300
    with pytest.raises(SystemExit, match="NAME=ROOT"):
        main([str(run_dir), "--benchmark", "nope=/tmp"])

    # --feature-cache DIR: the benchmarks' images are encoded once into DIR and read from there,
    # and the encoder is hashed once for both benchmarks.
    import mmit.data.features

    hashed = []
    fingerprint = mmit.data.features.fingerprint
    monkeypatch.setattr(mmit.data.features, "fingerprint", lambda *a: hashed.append(a[0]) or fingerprint(*a))
    cache = tmp_path / "features"
    cached = main(
        [str(run_dir), "--out", str(tmp_path / "cached"), "--max-new-tokens", "3"]
        + ["--benchmark", f"pope={fixtures / 'pope'}", "--benchmark", f"vqav2_testdev={fixtures / 'vqav2'}"]
        + ["--feature-cache", str(cache)]
    )
    assert hashed == ["image"]
    benchmarks = [
        load_benchmark(name, fixtures / folder) for name, folder in [("pope", "pope"), ("vqav2_testdev", "vqav2")]
    ]
    images = {m.sha256 for b in benchmarks for c in b.samples for m in c.media}
    manifest = json.loads((cache / "image" / "manifest.json").read_text())
    assert sum(manifest["shards"].values()) == len(images)
    assert json.loads((cached / "metrics.json").read_text())["scores"]["benchmarks"]["pope"]["n"] == n_pope


FIXTURES = Path(__file__).resolve().parent / "benchmarks" / "fixtures"


def _damaged_pope(folder: Path) -> Path:
    """The POPE fixture with one split file emptied."""
    shutil.copytree(FIXTURES / "pope", folder)
    (folder / "coco_pope_adversarial.json").write_text("")
    return folder


@pytest.mark.slow
def test_a_benchmark_scored_after_training_equals_mmit_eval_on_the_checkpoint(tmp_path):
    """trainer.benchmarks and mmit.eval --benchmark share their code: the same prompts, answers and scores."""
    from mmit.benchmarks import BenchmarkError
    from mmit.eval import main
    from mmit.inference import compose_config
    from mmit.train import run

    pope = FIXTURES / "pope"
    overrides = [
        "+recipe=vqa_tiny",
        "trainer.max_steps=2",
        "trainer.save_every=2",
        "trainer.batch_size=4",
        "trainer.generate_samples=2",
        "trainer.eval_batches=1",
        "trainer.precision=fp32",
        f"data.source.overrides=['prepare.n_images=40','out_dir={tmp_path}/demo','prepare.out_dir={tmp_path}/demo-src']",
    ]
    # a damaged benchmark folder stops the run before it trains, not after
    broken = _damaged_pope(tmp_path / "broken")
    with pytest.raises(BenchmarkError, match=r"coco_pope_adversarial\.json: holds no questions"):
        run(compose_config([*overrides, f"trainer.benchmarks={{pope: '{broken}'}}"]), tmp_path / "stopped")
    assert not (tmp_path / "stopped" / "checkpoints").exists()
    assert not (tmp_path / "stopped" / "metrics.jsonl").exists()

    summary = run(compose_config([*overrides, f"trainer.benchmarks={{pope: '{pope}'}}"]), tmp_path / "run")
    in_loop = summary["benchmarks"]["pope"]
    assert in_loop["n"] == 8 and set(in_loop["tables"]["split"]) == {"random", "popular", "adversarial"}
    assert summary["after"]["bench/pope/f1"] == in_loop["metrics"]["f1"]
    answers = json.loads((tmp_path / "run" / "answers_after.json").read_text())["pope"]

    out = main(
        [str(tmp_path / "run"), "--benchmark", f"pope={pope}", "--batch-size", "8", "--out", str(tmp_path / "e")]
    )
    offline = json.loads((out / "metrics.json").read_text())["scores"]["benchmarks"]["pope"]
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == [p["prompt"] for p in preds]
    assert [a["prediction"] for a in answers] == [p["prediction"] for p in preds]
    assert offline["metrics"] == in_loop["metrics"]


def test_eval_reads_every_set_first_and_finds_media_under_images_dir(vqa_run, tmp_path, monkeypatch):
    import mmit.evaluation
    from mmit.eval import main

    run_dir, _ = vqa_run
    (tmp_path / "media" / "pics").mkdir(parents=True)
    Image.new("RGB", (40, 40), "red").save(tmp_path / "media" / "pics" / "red.png")
    record = {
        "id": "r1",
        "image": "pics/red.png",  # relative to the image root, as LLaVA's JSON is
        "messages": [{"role": "user", "content": "<image>\nWhat colour?"}, {"role": "assistant", "content": "red"}],
    }
    mine = tmp_path / "sets" / "mine.jsonl"
    mine.parent.mkdir()
    mine.write_text(json.dumps(record) + "\n")
    (tmp_path / "sets" / "empty.jsonl").write_text("")
    common = [str(run_dir), "--only", "mine", "--max-new-tokens", "2", "--no-swap-media"]
    with pytest.raises(SystemExit, match=r"mine\.jsonl:1: .*pics/red\.png.*--images-dir FOLDER in mmit\.eval"):
        main([*common, "--sets", f"mine={mine}", "--out", str(tmp_path / "a")])
    # a bad second set stops the command before the first is evaluated: nothing is written
    both = [str(run_dir), "--only", "mine", "empty", "--no-swap-media", "--images-dir", str(tmp_path / "media")]
    evaluated = []
    monkeypatch.setattr(mmit.evaluation, "evaluate_set", lambda *a, **k: evaluated.append(a[2]))
    with pytest.raises(SystemExit, match=r"empty\.jsonl: holds no records"):
        main([*both, "--sets", f"mine={mine}", f"empty={mine.parent / 'empty.jsonl'}", "--out", str(tmp_path / "b")])
    assert evaluated == [] and not (tmp_path / "b").exists()
    # so does a damaged benchmark given after a good one (it was read only when its turn came)
    broken = _damaged_pope(tmp_path / "pope")
    benchmarks = ["--benchmark", f"vqav2_testdev={FIXTURES / 'vqav2'}", "--benchmark", f"pope={broken}"]
    with pytest.raises(SystemExit, match=r"coco_pope_adversarial\.json: holds no questions"):
        main(
            [
                *common,
                "--sets",
                f"mine={mine}",
                "--images-dir",
                str(tmp_path / "media"),
                *benchmarks,
                "--out",
                str(tmp_path / "b"),
            ]
        )
    assert evaluated == [] and not (tmp_path / "b").exists()
    monkeypatch.undo()
    with open(mine, "a") as f:  # a bad record, skipped under --on-error skip and named in the report
        f.write(json.dumps({**record, "id": "r2", "image": "pics/gone.png"}) + "\n")
    out = main(
        [*common, "--sets", f"mine={mine}", "--images-dir", str(tmp_path / "media"), "--on-error", "skip"]
        + ["--out", str(tmp_path / "c")]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["scores"]["tasks"]["mine"] and metrics["skipped"]["mine"] == {"missing_media": 1}
    assert "- skipped: mine: missing_media 1" in (out / "report.md").read_text()
    with pytest.raises(SystemExit, match="--images-dir .*nowhere is not a folder"):
        main([*common, "--sets", f"mine={mine}", "--images-dir", str(tmp_path / "nowhere")])
