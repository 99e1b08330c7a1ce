"""Evaluate a run (or a base model) on held-out instruction sets.

    python -m mmit.eval RUN_DIR [--checkpoint latest|none|STEP] [--sets NAME=PATH ...]
    python -m mmit.eval --base +recipe=vqa [override ...] --out DIR
    python -m mmit.eval RUN_DIR --benchmark pope=/data/pope --benchmark gqa=/data/gqa

``--benchmark NAME=ROOT`` reads a standard benchmark in its official layout (mmit.benchmarks:
vqav2, vqav2_testdev, gqa, textvqa, pope, scienceqa_img, mme, mmbench_dev), prompts it as
lmms-eval does and scores it with its official metric; given alone, only the benchmarks run.

Prompts come from the same code as training (chat template, media splice); answers are
generated in batches with a KV cache (greedy by default; ``--num-beams`` or ``--sample``).
Writes, atomically, into ``--out`` (default ``RUN_DIR/eval/<checkpoint>``): ``metrics.json``,
``predictions.jsonl``, ``report.md`` and PNG plots (per-task scores seen vs held-out, and the
run's training curves). VQA accuracy is the official VQAv2 script's unless ``--vqa-normalisation
lmms_eval`` (or the run's ``trainer.vqa_normalisation``) says otherwise; metrics.json names it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from mmit.benchmarks import BENCHMARKS, load_benchmarks
from mmit.cli import check_chosen, user_errors, whole_number
from mmit.data.sources import DataFile
from mmit.grounding import GROUNDING_NOTE, PRIOR_FILE, AnswerPrior, grounding_line, grounding_table
from mmit.metrics import VQA_NORMALISATIONS
from mmit.paths import atomic_dir, check_replaceable
from mmit.saved_config import run_config
from mmit.scoring import Prediction, headline_metric, score_predictions

# The modules that bring torch, transformers and matplotlib are imported where they are used, so that
# --help and mistakes in the command line answer in a second (mmit.chat shares this module's options).
if TYPE_CHECKING:
    from mmit.generation import GenerationOptions
    from mmit.inference import LoadedModel

log = logging.getLogger("mmit.eval")
# The files only an mmit.eval report holds: a report from before the .mmit-output mark is replaced too.
EARLIER_REPORT = ("metrics.json", "predictions.jsonl", "report.md")


def eval_sets_of(cfg: DictConfig, extra: dict[str, str], only: list[str] | None = None) -> dict[str, list[str]]:
    """The run's own evaluation sets (its config's ``data.source``), plus or replaced by ``extra``;
    ``only``: just these of them, each of which must be one."""
    from mmit.factory import instantiate_source

    sets = {}
    if cfg.get("data") and cfg.data.get("source"):
        sets = {name: list(paths) for name, paths in instantiate_source(cfg.data.source).eval.items()}
    sets.update({name: [path] for name, path in extra.items()})
    if not sets:
        raise ValueError("no evaluation sets: the config names none; give some with --sets NAME=PATH")
    if only:
        check_chosen("--only", only, sets, "this evaluation (the run's config and --sets)")
        sets = {name: paths for name, paths in sets.items() if name in only}
    return sets


def run_eval(
    loaded: LoadedModel,
    sets: dict[str, list[str]],
    options: GenerationOptions,
    max_samples: int = 0,
    batch_size: int | None = None,
    on_error: str = "raise",
    prior: AnswerPrior | None = None,
    swap_media: bool = True,
    seed: int = 0,
    vqa_normalisation: str = "official",
    features_for: Callable[[list], dict] | None = None,
) -> tuple[list[Prediction], dict, dict]:
    """Generate and score every set, with own and swapped media and beside the blind prior;
    returns predictions (each with what it said given swapped media), scores and what was skipped.
    ``features_for`` (:func:`cached_media`): conversations -> the feature stores holding their media;
    None runs the encoders on every item. ``batch_size``: prompts answered at once (default
    ``mmit.generation.ANSWER_BATCH``)."""
    from mmit.data.sources import read_conversations
    from mmit.data.tokenize import MAX_MEDIA, Tokenizer
    from mmit.evaluation import evaluate_set
    from mmit.generation import ANSWER_BATCH
    from mmit.training.loop import per_task_prefix

    data = loaded.cfg.get("data") or {}
    tokenize = Tokenizer(
        loaded.tokenizer,
        data.get("max_length", 2048),
        data.get("overlength", "truncate"),
        on_error,
        list(loaded.model.slots.values()),
        data.get("max_media", MAX_MEDIA),
    )
    # Every set is read and tokenized before any is evaluated, so a bad file stops the command at once.
    prepared, skipped = {}, {}
    for name, paths in sets.items():
        counts = Counter()
        convs = read_conversations(paths, on_error=on_error, skipped=counts)
        usable = [c for c in convs if all(m.kind in loaded.model.slots for m in c.media)]
        if len(usable) < len(convs):
            counts["media without an encoder"] += len(convs) - len(usable)
        # Scored as training scores them: the samples that tokenize under the run's data policy,
        # in the same seeded order, the first max_samples of each task (training's in-loop subset).
        random.Random(0).shuffle(usable)
        before = Counter(tokenize.skipped)
        pairs = [(c, s) for c in usable if (s := tokenize(c)) is not None]
        counts.update(Counter(tokenize.skipped) - before)
        prepared[name] = [pairs[i] for i in per_task_prefix([c for c, _ in pairs], max_samples)]
        skipped[name] = dict(counts)
        log.info("%s: %d samples from %s", name, len(prepared[name]), ", ".join(map(str, paths)))
        if counts:
            log.warning("skipped %s", skipped_line({name: counts}))
    predictions, swapped = [], []
    for name, pairs in prepared.items():
        result = evaluate_set(
            loaded.model,
            loaded.tokenizer,
            name,
            [c for c, _ in pairs],
            options,
            samples=[s for _, s in pairs],
            swap_media=swap_media,
            seed=seed,
            batch_size=batch_size or ANSWER_BATCH,
            autocast_dtype=loaded.autocast_dtype,
            preprocess=loaded.preprocess,
            progress=True,
            features=features_for([c for c, _ in pairs]) if features_for else None,
        )
        predictions += result.predictions
        swapped += result.swapped
    return predictions, swapped, score_predictions(predictions, swapped, prior, vqa_normalisation), skipped


def cached_media(loaded: LoadedModel, feature_cache: str) -> Callable[[list], dict] | None:
    """``--feature-cache``, as training's ``feature_cache`` setting: None for ``none`` (the encoders
    run on every item), else conversations -> the feature stores (modality -> store) holding their
    media, encoding those not yet cached. Every set and benchmark shares one hash of each encoder."""
    from omegaconf import OmegaConf

    from mmit.factory import feature_stores

    if not feature_cache or feature_cache == "none":
        return None
    cfg, device = OmegaConf.merge(loaded.cfg, {"feature_cache": feature_cache}), str(loaded.device)
    fingerprints = {}
    return lambda convs: feature_stores(
        cfg, loaded.model, lambda: (m for c in convs for m in c.media), device, fingerprints
    )


def benchmark_lines(benchmarks: dict[str, dict]) -> list[str]:
    """The report's benchmark section: every metric (with swapped images beside it) and every table."""
    lines = []
    for name, b in benchmarks.items():
        lines += ["", f"### {name} ({b['n']} samples)", ""]
        if "submission" in b:
            lines.append(f"No reference answers: the EvalAI submission file is {b['submission']}.")
            continue
        blind = b.get("swapped_media", {})
        rows = [[k, v, blind.get(k, math.nan)] for k, v in b["metrics"].items()]
        lines += _table(["metric", "score", "with swapped images"], rows)
        if "dependence" in b:
            lines += ["", f"Media dependence of {b['headline']}: {_fmt(b['dependence'])}"]
        elif "no_dependence" in b:
            lines += ["", f"Media dependence not measured: {b['no_dependence']}."]
        for table, table_rows in b.get("tables", {}).items():
            columns = sorted({c for row in table_rows.values() for c in row}, key=str)
            lines += ["", f"By {table}:", ""]
            lines += _table([table, *columns], [[r, *(v.get(c, "") for c in columns)] for r, v in table_rows.items()])
    return lines


def vqa_normalisation_of(loaded: LoadedModel, requested: str | None) -> str:
    """``--vqa-normalisation`` when given, else the run's ``trainer.vqa_normalisation``, else official."""
    if requested is not None:
        return requested
    trainer = loaded.cfg.get("trainer") or {}
    chosen = trainer.get("vqa_normalisation") or "official"
    if chosen not in VQA_NORMALISATIONS:
        raise ValueError(f"trainer.vqa_normalisation must be one of {', '.join(VQA_NORMALISATIONS)}, not {chosen!r}")
    return chosen


def run_prior(loaded: LoadedModel, run_dir: Path | None) -> AnswerPrior | None:
    """The blind prior of the run's training set: saved by mmit.train, else read from its config."""
    from mmit.data.sources import read_conversations
    from mmit.factory import instantiate_source

    if run_dir is not None and (run_dir / PRIOR_FILE).is_file():
        return AnswerPrior.load(run_dir / PRIOR_FILE)
    source = (loaded.cfg.get("data") or {}).get("source")
    if not source:
        return None
    log.info("reading the training set for the blind prior")
    return AnswerPrior.from_conversations(read_conversations(instantiate_source(source).train, on_error="skip"))


def skipped_line(skipped: dict[str, dict[str, int]]) -> str:
    """What the data policy left out of each set, by reason ("heldout: too_long 2, not_utf8 1"), or ""."""
    return "; ".join(
        f"{name}: " + ", ".join(f"{reason} {n}" for reason, n in counts.items())
        for name, counts in skipped.items()
        if counts
    )


def _fmt(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
    ]


def format_report(title: str, facts: dict[str, str], scores: dict, plots: list[str]) -> str:
    """The Markdown report: sets, tasks, the seen / held-out gap, then every template."""
    lines = [f"# {title}", "", *(f"- {k}: {v}" for k, v in facts.items()), "", "## Sets", ""]
    lines += _table(
        ["set", "samples", "score (mean of task headlines)", "exact match", "VQA accuracy"],
        [[s, v["n"], v["score"], v["exact_match"], v.get("vqa_accuracy", math.nan)] for s, v in scores["sets"].items()],
    )
    if scores.get("grounding"):
        lines += ["", "## Does it look?", "", GROUNDING_NOTE, "", *grounding_table(scores["grounding"])]
    if scores.get("benchmarks"):
        lines += ["", "## Benchmarks", *benchmark_lines(scores["benchmarks"])]
    lines += ["", "## Tasks", ""]
    for set_name, tasks in scores["tasks"].items():
        for task, values in tasks.items():
            shown = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items() if k != "n")
            lines.append(f"- **{set_name} / {task}** ({values['n']} samples): {shown}")
    if scores["gaps"]:
        lines += [
            "",
            "## Seen vs held-out",
            "",
            "Headline score on training wordings minus on held-out ones: a large gap means the model learned "
            "the templates' surface rather than the task.",
            "",
        ]
        rows = [
            [set_name, task, g["metric"], g["seen"], g["heldout"], g["gap"], g["compared_with"]]
            for set_name, tasks in scores["gaps"].items()
            for task, g in tasks.items()
        ]
        lines += _table(["held-out set", "task", "metric", "seen", "held-out", "gap", "seen score from"], rows)
    lines += ["", "## Templates", ""]
    rows = [
        [set_name, task, template or "(none)", values["n"], values["metric"], values[values["metric"]]]
        for set_name, tasks in scores["templates"].items()
        for task, templates in tasks.items()
        for template, values in templates.items()
    ]
    lines += _table(["set", "task", "template", "samples", "metric", "score"], rows)
    lines += ["", *(f"![{Path(p).stem}]({Path(p).name})" for p in plots), ""]
    return "\n".join(lines)


def write_outputs(
    out: Path,
    predictions: list[Prediction],
    scores: dict,
    info: dict,
    run_dir: Path | None,
    swapped: list[Prediction] = (),
    files: dict[str, object] | None = None,
    chosen: bool = True,
) -> Path:
    """metrics.json, predictions.jsonl, plots, report.md and ``files`` (name -> JSON), all appearing at
    once. ``chosen``: the user named ``out``, which is then replaced only if mmit.eval wrote it."""
    from mmit.plots import plot_benchmarks, plot_grounding, plot_task_scores, plot_training_curves
    from mmit.training.loop import answers_by_set

    with atomic_dir(out, "mmit.eval", guard=chosen, earlier=EARLIER_REPORT) as tmp:
        for name, content in (files or {}).items():
            (tmp / name).write_text(json.dumps(content), encoding="utf-8")
        (tmp / "metrics.json").write_text(json.dumps({**info, "scores": scores}, indent=1), encoding="utf-8")
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
            for entries in answers_by_set(predictions, list(swapped)).values():
                for entry in entries:
                    f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        plots = [
            plot_task_scores(scores, tmp / "task_scores.png"),
            plot_grounding(scores.get("grounding", {}), tmp / "grounding.png"),
            plot_benchmarks(scores.get("benchmarks", {}), tmp / "benchmarks.png"),
        ]
        if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
            from mmit.training.tracking import read_metrics

            try:  # the run's own curves: a damaged log costs their plot, not the evaluation
                plots.append(plot_training_curves(read_metrics(run_dir / "metrics.jsonl"), tmp / "training_curves.png"))
            except ValueError as err:
                log.warning("training curves not drawn: %s", err)
        facts = {k: v for k, v in info.items() if isinstance(v, str | int | float)}
        if skipped := skipped_line(info.get("skipped") or {}):
            facts["skipped"] = skipped
        report = format_report("mmit evaluation", facts, scores, [str(p) for p in plots if p])
        (tmp / "report.md").write_text(report, encoding="utf-8")
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mmit.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", type=Path, help="a training run directory")
    p.add_argument("--base", nargs="+", metavar="OVERRIDE", help="evaluate an untrained model composed from overrides")
    p.add_argument("--checkpoint", default="latest", help="latest (default), none, a step number or a directory")
    p.add_argument("--sets", nargs="+", default=[], metavar="NAME=PATH", help="extra sets: shard dirs or JSONL files")
    p.add_argument(
        "--images-dir",
        type=Path,
        metavar="FOLDER",
        help="the folder the media paths of --sets files are relative to (default: each file's own folder)",
    )
    p.add_argument("--only", nargs="+", metavar="NAME", help="evaluate only these sets")
    p.add_argument(
        "--benchmark",
        action="append",
        default=[],
        metavar="NAME=ROOT",
        help=f"a standard benchmark in its official layout (repeatable): {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--max-samples", type=whole_number(0), default=0, help="per task of each set (0 = all)")
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/eval/<checkpoint>)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="prompts answered at once (default: the run's trainer.eval_batch_size)",
    )
    p.add_argument(
        "--on-error", choices=("raise", "skip"), default="raise", help="bad samples: stop, or skip and count"
    )
    p.add_argument(
        "--no-swap-media",
        action="store_true",
        help="skip the second pass with media swapped between samples (no media dependence; half the time)",
    )
    p.add_argument(
        "--vqa-normalisation",
        choices=VQA_NORMALISATIONS,
        help="VQA accuracy as the official VQAv2 script computes it, or as lmms-eval does "
        "(default: the run's trainer.vqa_normalisation, else official)",
    )
    p.add_argument(
        "--feature-cache",
        default="none",
        metavar="none|auto|DIR",
        help="read the frozen encoders' outputs from a feature cache, as training's feature_cache does (auto: "
        "the mmit cache's folder for this encoder, which a run with feature_cache=auto filled; items not in it "
        "are encoded and added): the in-loop evaluation's exact inputs, without running the encoders. "
        "Default none: every image and clip goes through its encoder, as when the model is deployed",
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--precision", default=None, choices=("auto", "bf16", "fp32"), help="default: the run's trainer.precision"
    )
    add_generation_args(p)
    args = p.parse_args(argv)
    if (args.run_dir is None) == (args.base is None):
        p.error("give either a run directory or --base OVERRIDE...")
    if args.base is not None and args.out is None:
        p.error("--base needs --out")
    if args.batch_size is not None and args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, not {args.batch_size}")
    return args


def add_generation_args(p: argparse.ArgumentParser, max_new_tokens: int = 32) -> None:
    g = p.add_argument_group("generation (greedy unless --num-beams or --sample)")
    g.add_argument(
        "--max-new-tokens",
        type=whole_number(1),
        default=None,
        help=f"for every answer; default: the run's trainer.max_new_tokens (per task where it names tasks), else "
        f"{max_new_tokens}; benchmarks: lmms-eval's per task",
    )
    p.set_defaults(default_max_new_tokens=max_new_tokens)
    g.add_argument("--num-beams", type=whole_number(1), default=1)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)


def generation_options(args: argparse.Namespace, configured: int | dict | None = None) -> GenerationOptions:
    """The command line's options; the answer lengths are ``--max-new-tokens`` for every answer when
    given, else the run's own ``trainer.max_new_tokens`` (``configured``), so that mmit.eval answers
    as the run's in-loop evaluation did, else the command's default."""
    from mmit.generation import GenerationOptions

    return GenerationOptions.from_setting(
        args.max_new_tokens or configured or args.default_max_new_tokens,
        num_beams=args.num_beams,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
    )


@user_errors("mmit.eval")  # a user's mistake ends with one line naming it, not a traceback
def main(argv: list[str] | None = None) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Mistakes in the command line fail in a second: before torch and the model load.
    extra = {}
    for item in args.sets:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--sets takes NAME=PATH, not {item!r}")
        extra[name] = DataFile(path, args.images_dir)
    if args.images_dir is not None and not args.sets:
        raise ValueError("--images-dir goes with --sets (the run's own sets keep the folder they were trained with)")
    if args.images_dir is not None and not args.images_dir.is_dir():
        raise ValueError(f"--images-dir {args.images_dir} is not a folder")
    benchmarks = {}
    for item in args.benchmark:
        name, sep, root = item.partition("=")
        if not sep or name not in BENCHMARKS or not root:
            raise ValueError(f"--benchmark takes NAME=ROOT with NAME one of {', '.join(BENCHMARKS)}, not {item!r}")
        benchmarks[name] = root
    if args.out is not None:  # a folder of the user's, the run's or the current one is not replaced
        check_replaceable(args.out, "mmit.eval", EARLIER_REPORT)
    if args.run_dir is not None:
        run_config(args.run_dir)
    read = load_benchmarks(benchmarks)  # every one read (and checked) before a model loads or a set is answered
    from mmit.evaluation import evaluate_benchmarks
    from mmit.generation import ANSWER_BATCH
    from mmit.inference import compose_config, load_model, load_run, read_run_config

    cfg = compose_config(args.base) if args.base is not None else read_run_config(args.run_dir)
    sets = {} if benchmarks and not (extra or args.only) else eval_sets_of(cfg, extra, args.only)
    if args.base is not None:
        loaded = load_model(cfg, None, args.device, args.precision or "auto")
    else:
        loaded = load_run(args.run_dir, args.checkpoint, args.device, args.precision, cfg)
    lengths = OmegaConf.select(cfg, "trainer.max_new_tokens")  # the run's (or --base recipe's)
    options = generation_options(args, OmegaConf.to_container(lengths) if isinstance(lengths, DictConfig) else lengths)
    batch_size = args.batch_size or OmegaConf.select(cfg, "trainer.eval_batch_size", default=ANSWER_BATCH)

    vqa_normalisation = vqa_normalisation_of(loaded, args.vqa_normalisation)
    started = time.perf_counter()
    prior = run_prior(loaded, args.run_dir)
    features_for = cached_media(loaded, args.feature_cache)
    predictions, swapped, scores, skipped = run_eval(
        loaded,
        sets,
        options,
        args.max_samples,
        batch_size,
        args.on_error,
        prior,
        swap_media=not args.no_swap_media,
        seed=args.seed,
        vqa_normalisation=vqa_normalisation,
        features_for=features_for,
    )
    submissions = {}
    if benchmarks:
        bench_predictions, bench_swapped, scores["benchmarks"], submissions = evaluate_benchmarks(
            loaded.model,
            loaded.tokenizer,
            read,
            options,
            batch_size,
            swap_media=not args.no_swap_media,
            seed=args.seed,
            keep_max_new_tokens=args.max_new_tokens is not None,
            autocast_dtype=loaded.autocast_dtype,
            preprocess=loaded.preprocess,
            features_for=features_for,
        )
        predictions, swapped = predictions + bench_predictions, swapped + bench_swapped
    elapsed = time.perf_counter() - started
    checkpoint = loaded.checkpoint.name if loaded.checkpoint else "none"
    out = args.out or args.run_dir / "eval" / checkpoint
    info = {
        "model": str(args.run_dir) if args.run_dir else "base: " + " ".join(args.base),
        "checkpoint": str(loaded.checkpoint or "none (no trained weights)"),
        "llm": loaded.source,
        "device": str(loaded.device),
        "precision": loaded.precision,
        "decoding": _decoding(options),
        "answer_lengths": options.limits(),
        "batch_size": batch_size,
        "vqa_normalisation": vqa_normalisation,
        "media": "encoders on every item" if args.feature_cache == "none" else f"feature cache: {args.feature_cache}",
        "samples": len(predictions),
        "seconds": round(elapsed, 1),
        "generation": options.to_json(),
        "sets": sets,
        "benchmarks": benchmarks,
        "skipped": skipped,
    }
    files = {f"{name}_submission.json": rows for name, rows in submissions.items()}
    write_outputs(out, predictions, scores, info, args.run_dir, swapped, files, chosen=args.out is not None)
    print(summary_text(scores, out))
    return out


def _decoding(options: GenerationOptions) -> str:
    if options.do_sample:
        return f"sampling (temperature {options.temperature}, top-p {options.top_p}, top-k {options.top_k})"
    return f"beam search ({options.num_beams} beams)" if options.num_beams > 1 else "greedy"


def summary_text(scores: dict, out: Path) -> str:
    """What the terminal shows at the end: per-set and per-task headline scores."""
    lines = [f"Evaluation written to {out} (report.md, metrics.json, predictions.jsonl, plots)"]
    if any("vqa_accuracy" in values for values in scores["sets"].values()):
        lines.append(f"  VQA accuracy normalised as: {scores.get('vqa_normalisation', 'official')}")
    for set_name, values in scores["sets"].items():
        tasks = scores["tasks"][set_name]
        shown = ", ".join(f"{t} {headline_metric(t)}={_fmt(m[headline_metric(t)])}" for t, m in tasks.items())
        lines.append(f"  {set_name} ({values['n']}): score {_fmt(values['score'])}; {shown}")
        for task, g in scores.get("grounding", {}).get(set_name, {}).items():
            lines.append(f"    {task}: {grounding_line(g)}")
    for set_name, tasks in scores["gaps"].items():
        gaps = ", ".join(f"{t} {_fmt(g['gap'])}" for t, g in tasks.items())
        lines.append(f"  gap seen - {set_name}: {gaps}")
    for name, b in scores.get("benchmarks", {}).items():
        if "submission" in b:
            lines.append(f"  {name} ({b['n']}): no references; submission file {b['submission']}")
            continue
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in list(b["metrics"].items())[:4])
        dependence = f"; media dependence {_fmt(b['dependence'])}" if "dependence" in b else ""
        lines.append(f"  {name} ({b['n']}): {shown}{dependence}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
