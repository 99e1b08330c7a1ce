"""LLM-generated instruction data: ``python -m mmit.synth <recipe> [key=value ...]``.

A recipe (``data_recipes/<name>.yaml``) picks one ``mode``:
- ``self_instruct``: from seed tasks the LLM proposes new instructions, which pass Self-Instruct's
  filters (length, start, keyword blocklist, exact and ROUGE-L near duplicates), then writes an
  input (or none) and an output for each kept one;
- ``write_outputs``: the LLM writes the answers of annotations any ``mmit.build`` reader yields:
  a detailed description or a conversation from an image's captions and QA pairs (the media
  bytes go into the shard), or a new answer to an instruction;
- ``self_chat``: the LLM plays the user (role-swapped prompts) and the assistant from seed topics.

LLM calls are batched. Each batch's answers are stored under ``<out_dir>/.synth/calls``, named by
a hash of the model, the options and the prompts, and sampling is seeded by that hash. A run
therefore replays what an interrupted one generated and goes on from there. The same recipe and
seed give byte-identical shards. The output is ``mmit.build``'s shards and ``manifest.json``,
with a ``generation`` section: proposed, kept, rejected by reason, examples.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from mmit.build import recipe_command
from mmit.data.annotations import Annotation
from mmit.data.instructions import CAPTION_TASKS
from mmit.data.manifest import file_sha256, format_manifest, recipe_manifest, source_hashes
from mmit.data.media_checks import check_media_file
from mmit.data.recipes import BuildError, load_template_files
from mmit.data.samples import (
    Conversation,
    MediaRef,
    Message,
    SampleError,
    alpaca_messages,
    is_number,
    is_unicode,
    is_whole_number,
    json_type,
)
from mmit.data.shard_writer import Storage, write_shard
from mmit.data.sources import ON_ERROR, jsonl_records
from mmit.data.splits import read_annotations, split_of
from mmit.data.templates import choose_template, sample_rng
from mmit.generation import GenerationOptions, Prompt
from mmit.metrics import text_rouge_l
from mmit.paths import atomic_write_text
from mmit.synth.filters import (
    InstructionPool,
    Rejection,
    TextFilter,
    check_copied,
    check_echo,
    clean_turn,
    ends_with,
    looks_truncated,
    normalize_text,
    parse_dialogue,
    parse_input,
    parse_numbered_list,
    trim_to_sentence,
)

log = logging.getLogger("mmit.synth")

MODES = ("self_instruct", "write_outputs", "self_chat")
SETS = ("train", "val_seen")
GenerateFn = Callable[[list[Prompt], GenerationOptions], list[str]]


class Answer(str):
    """What the LLM wrote; ``cut`` is True when it stopped at max_new_tokens (None: not known)."""

    cut: bool | None = None

    @classmethod
    def of(cls, text: str, cut: bool | None) -> Answer:
        answer = cls(text)
        answer.cut = cut
        return answer


# --- the LLM, its batches and their journal ---------------------------------------------------


def load_writer(cfg: DictConfig) -> GenerateFn:
    """The recipe's LLM (``model`` overrides of the training config, or a trained ``run_dir``)."""
    from mmit.inference import load_base, load_run

    if cfg.get("run_dir"):
        loaded = load_run(cfg.run_dir, cfg.get("checkpoint", "latest"), cfg.device, cfg.precision)
    else:  # frozen: no adapter wrapping, generation only
        loaded = load_base([*cfg.model, "peft=frozen"], cfg.device, cfg.precision)
    log.info("writer LLM: %s (%s)", loaded.source, loaded.precision)

    def generate(prompts: list[Prompt], options: GenerationOptions) -> list[str]:
        with warnings.catch_warnings():
            # Generation starts from embeddings, so a repetition penalty covers only the new tokens:
            # what we want (copying words of the prompt is fine), and transformers need not warn.
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty`")
            finished: list[bool] = []
            answers = loaded.generate(prompts, options, batch_size=len(prompts), finished=finished)
        return [Answer.of(text, not done) for text, done in zip(answers, finished, strict=True)]

    return generate


class LLMCalls:
    """Batched LLM calls whose answers are kept on disk, so a rerun replays them instead.

    The model is loaded on the first batch that is not stored yet: a rerun of a finished run
    never loads it.
    """

    def __init__(self, directory: Path, model_key: str, batch_size: int, load: Callable[[], GenerateFn]):
        self.directory, self.model_key, self.batch_size, self._load = directory, model_key, batch_size, load
        self._generate: GenerateFn | None = None
        self.batches: Counter = Counter()  # generated / replayed
        directory.mkdir(parents=True, exist_ok=True)

    def _key(self, prompts: list[Prompt], options: GenerationOptions) -> str:
        media = [[m.sha256 for m in p.media] for p in prompts]
        blob = {"model": self.model_key, "options": options.to_json(), "chats": [p.chat for p in prompts]}
        text = json.dumps({**blob, "media": media}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def __call__(self, stage: str, prompts: list[Prompt], options: GenerationOptions) -> list[Answer]:
        answers: list[Answer] = []
        with tqdm(total=len(prompts), desc=stage, unit="prompt", leave=False, disable=not prompts) as bar:
            for start in range(0, len(prompts), self.batch_size):
                chunk = prompts[start : start + self.batch_size]
                key = self._key(chunk, options)
                path = self.directory / f"{key}.json"
                if path.exists():
                    stored = json.loads(path.read_text(encoding="utf-8"))
                    cut = stored.get("cut") or [None] * len(stored["answers"])
                    got = [Answer.of(text, flag) for text, flag in zip(stored["answers"], cut, strict=True)]
                    self.batches["replayed"] += 1
                else:
                    if self._generate is None:
                        self._generate = self._load()
                    # Seeded by the batch itself: the same batch samples the same text in any run.
                    seeded = dataclasses.replace(options, seed=int(key[:8], 16)) if options.do_sample else options
                    got = [Answer.of(str(a), getattr(a, "cut", None)) for a in self._generate(chunk, seeded)]
                    if len(got) != len(chunk):
                        raise BuildError(f"the LLM returned {len(got)} answers for {len(chunk)} prompts")
                    stored = {"stage": stage, "answers": got, "cut": [a.cut for a in got]}
                    atomic_write_text(path, json.dumps(stored, ensure_ascii=False))
                    self.batches["generated"] += 1
                answers += got
                bar.update(len(chunk))
        return answers


def cut_off(answer: Answer, cfg: DictConfig) -> Rejection | None:
    """An answer that stopped at max_new_tokens is unfinished (``drop_truncated``, on by default)."""
    if answer.cut and cfg.get("drop_truncated", True):
        return Rejection("truncated", "stopped at max_new_tokens")
    return None


def options_of(cfg: DictConfig, stage: str) -> GenerationOptions:
    return GenerationOptions(**OmegaConf.to_container(cfg.generation[stage]))


def user_prompt(text: str, system: str | None = None) -> Prompt:
    chat = [{"role": "system", "content": system}] if system else []
    return Prompt([*chat, {"role": "user", "content": text}], [])


@dataclass
class Tally:
    """Counts, rejections by reason and a few examples of each, for the manifest."""

    counts: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    rejected_examples: dict[str, list[dict]] = field(default_factory=dict)
    kept_examples: list[dict] = field(default_factory=list)
    max_examples: int = 3

    def reject(self, rejection: Rejection, text: str, suffix: str = "") -> None:
        reason = f"{rejection.reason}{suffix}"
        self.rejected[reason] += 1
        examples = self.rejected_examples.setdefault(reason, [])
        if len(examples) < self.max_examples:
            examples.append({"text": _clip(text), "detail": rejection.detail})

    def keep(self, example: dict, limit: int = 8) -> None:
        if len(self.kept_examples) < limit:
            self.kept_examples.append({k: _clip(v) if isinstance(v, str) else v for k, v in example.items()})

    def to_json(self) -> dict:
        return {
            **dict(sorted(self.counts.items())),
            "rejected": dict(sorted(self.rejected.items())),
            "examples": {"kept": self.kept_examples, "rejected": dict(sorted(self.rejected_examples.items()))},
        }


def _clip(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- self-instruct -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedTask:
    instruction: str
    input: str = ""
    output: str = ""


def load_seed_tasks(path: str) -> list[SeedTask]:
    """Seed tasks from JSONL: ``{instruction, input, output}`` or Self-Instruct's ``{instruction, instances}``."""
    tasks = []
    for where, record in jsonl_records(path):
        if isinstance(record, SampleError):  # bad JSON, not UTF-8: the reader's own message
            raise BuildError(f"{where}: {record}")
        if not isinstance(record, dict):
            raise BuildError(f"{where}: a seed task is a JSON object, not {json_type(record)}")
        instruction = _seed_text(record, "instruction", where)
        if not instruction.strip():
            raise BuildError(f"{where}: a seed task needs an 'instruction'")
        instances = record.get("instances")
        if instances is not None and not isinstance(instances, list):
            raise BuildError(
                f"{where}: 'instances' must be a list of {{input, output}} objects, not {json_type(instances)}"
            )
        for instance in instances or []:
            if not isinstance(instance, dict):
                raise BuildError(
                    f"{where}: 'instances' must be a list of {{input, output}} objects; it holds {json_type(instance)}"
                )
        instance = (instances or [record])[0]
        inputs, output = _seed_text(instance, "input", where), _seed_text(instance, "output", where)
        tasks.append(SeedTask(instruction.strip(), inputs, output))
    if not tasks:
        raise BuildError(f"{path}: no seed tasks")
    return tasks


def _seed_text(record: dict, key: str, where: str) -> str:
    """A seed task's text field ("" when absent or null); BuildError naming ``where`` for another type
    or for text that is not UTF-8 (JSON's lone surrogate escapes), which no prompt can carry."""
    value = record.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BuildError(f"{where}: a seed task's {key!r} must be a string, not {json_type(value)}")
    if not is_unicode(value):
        raise BuildError(f"{where}: a seed task's {key!r} holds a lone surrogate (\\ud800-\\udfff), not text")
    return value


def propose_prompt(cfg: DictConfig, seeds: list[SeedTask], generated: list[str], key: str) -> Prompt:
    """Few-shot: ``seed_examples`` seed instructions and ``generated_examples`` generated ones."""
    rng = sample_rng(cfg.seed, key)
    examples = rng.sample([s.instruction for s in seeds], min(cfg.seed_examples, len(seeds)))
    examples += rng.sample(generated, min(cfg.generated_examples, len(generated)))
    rng.shuffle(examples)
    listing = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, 1))
    text = cfg.prompts.propose.format(examples=listing, n=cfg.new_per_prompt, next=len(examples) + 1)
    return user_prompt(text, cfg.prompts.get("system"))


def self_instruct(cfg: DictConfig, calls: LLMCalls) -> tuple[list[tuple[str, Conversation]], dict]:
    seeds = load_seed_tasks(cfg.seed_tasks)
    pool = InstructionPool(TextFilter(**OmegaConf.to_container(cfg.filters.instruction)), cfg.filters.rouge_threshold)
    for seed in seeds:
        pool.add(seed.instruction)
    answer_filter = TextFilter(**OmegaConf.to_container(cfg.filters.output))
    input_filter = TextFilter(**OmegaConf.to_container(cfg.filters.input))
    tally, generated, samples = Tally(), [], []
    progress = tqdm(total=cfg.target, desc="self-instruct samples", unit="sample")
    for round_index in range(cfg.max_rounds):
        if len(samples) >= cfg.target:
            break
        tally.counts["rounds"] += 1
        prompts = [
            propose_prompt(cfg, seeds, generated, f"round{round_index}:{i}") for i in range(cfg.prompts_per_round)
        ]
        new = []
        for answer in calls(f"propose r{round_index}", prompts, options_of(cfg, "propose")):
            items = parse_numbered_list(answer)
            if not items:
                tally.reject(Rejection("unparseable", "no numbered list"), answer)
            cut_item = len(items) - 1 if looks_truncated(answer, items, answer.cut) else None
            for k, item in enumerate(items):
                tally.counts["proposed"] += 1
                found = None
                if k == cut_item:
                    found = Rejection("truncated", "the answer stops inside this item")
                found = found or pool.offer(item)
                if found:
                    tally.reject(found, item)
                else:
                    new.append(item)
        tally.counts["kept"] += len(new)
        generated += new
        inputs, cut = [""] * len(new), [None] * len(new)
        if cfg.generate_inputs and new:
            asked = [user_prompt(cfg.prompts.input.format(instruction=i), cfg.prompts.get("system")) for i in new]
            answers = calls(f"inputs r{round_index}", asked, options_of(cfg, "input"))
            inputs = [parse_input(a, i) for a, i in zip(answers, new, strict=True)]
            # An input is cut if generation stopped inside it (not in whatever the model wrote after it).
            cut = [cut_off(a, cfg) if text and ends_with(a, text) else None for a, text in zip(answers, inputs)]
        records = []
        for k, (instruction, text) in enumerate(zip(new, inputs, strict=True)):
            found = (input_filter.check(text) or cut[k]) if text else None
            if found:
                tally.reject(found, f"{instruction}\n---\n{text}", "_input")
            else:
                records.append({"instruction": instruction, "input": text})
        # The output is asked exactly as the training sample will ask it.
        asked = [user_prompt(alpaca_messages({**r, "output": ""}, "")[0].content) for r in records]
        outputs = calls(f"outputs r{round_index}", asked, options_of(cfg, "output"))
        for record, output in zip(records, outputs, strict=True):
            found = (
                answer_filter.check(output)
                or cut_off(output, cfg)
                or check_echo(output, record["instruction"], record["input"])
            )
            if found:
                tally.reject(found, f"{record['instruction']}\n---\n{output}", "_output")
                continue
            record = {**record, "output": output.strip()}
            sample_id = f"self_instruct-{len(samples):06d}"
            meta = {"source": "self_instruct", "tasks": ["self_instruct"], "round": round_index}
            conv = Conversation(sample_id, alpaca_messages(record, sample_id), meta)
            samples.append((split_of(normalize_text(record["instruction"]), cfg.eval_fraction), conv))
            tally.keep(record)
            progress.update(1)
        log.info(
            "round %d: %d proposed so far, %d instructions kept, %d samples",
            round_index,
            tally.counts["proposed"],
            tally.counts["kept"],
            len(samples),
        )
    progress.close()
    samples = samples[: cfg.target]
    tally.counts["samples"] = len(samples)
    return samples, tally.to_json()


# --- write outputs for annotations -------------------------------------------------------------

VISUAL_STYLES = ("detailed_description", "conversation")


def _context(anns: list[Annotation], max_facts: int) -> dict[str, str]:
    """What the text-only writer learns about a media item: its captions and QA pairs."""
    captions = list(dict.fromkeys(c for a in anns for c in a.captions))
    facts = list(dict.fromkeys(f"{qa.question} {qa.answer}" for a in anns for qa in a.qas))[:max_facts]
    kind = anns[0].media[0].kind if anns[0].media else "image"
    return {
        "kind": kind,
        "captions": "\n".join(f"- {c}" for c in captions) or "- (none)",
        "facts": "\n".join(f"- {f}" for f in facts) or "- (none)",
    }


def _with_placeholders(text: str, media: list[MediaRef]) -> str:
    return "\n".join([f"<{m.kind}>" for m in media] + [text])


@dataclass
class WriteJob:
    sample_id: str
    style: str
    split: str
    prompt: Prompt
    media: list[MediaRef]
    messages: list[Message]  # the turns before the written one (answer style)
    meta: dict
    prompt_parts: list[str] = field(default_factory=list)  # the prompt's own wording, around its data


def write_jobs(cfg: DictConfig, annotations: list[Annotation], tally: Tally) -> list[WriteJob]:
    """One LLM call per (media item, visual style) and per instruction to answer."""
    templates = load_template_files(cfg.templates) if cfg.get("templates") else {}
    styles = list(cfg.styles)
    unknown = set(styles) - {*VISUAL_STYLES, "answer"}
    if unknown:
        raise BuildError(f"unknown styles {sorted(unknown)}; known: {[*VISUAL_STYLES, 'answer']}")
    task = cfg.get("description_task", "caption_detailed")
    if "detailed_description" in styles and (task not in templates or task not in CAPTION_TASKS):
        raise BuildError(
            f"detailed_description needs description_task {task!r} to be a caption task "
            f"({', '.join(CAPTION_TASKS)}) worded in the recipe's templates"
        )
    system = cfg.prompts.get("system")
    by_group: dict[str, list[Annotation]] = {}
    for ann in annotations:
        by_group.setdefault(ann.group, []).append(ann)
    jobs = []
    for group in sorted(by_group):
        anns = by_group[group]
        split = split_of(group, cfg.eval_fraction)
        described = [a for a in anns if a.kind in ("caption", "vqa") and a.media]
        for style in (s for s in styles if s in VISUAL_STYLES and described):
            sample_id = f"{style}-{described[0].id}"
            context = _context(described, cfg.get("max_facts", 10))
            text = cfg.prompts[style].format(**context)
            meta = {
                "source": described[0].source,
                "tasks": [f"synth_{style}"],
                "templates": [],
                "from": described[0].id,
            }
            if style == "detailed_description":
                template = choose_template(templates[task], sample_rng(cfg.seed, sample_id), False)
                meta["templates"] = [template.id]
                question = _with_placeholders(template.render({}), described[0].media)
                messages = [Message("user", question)]
            else:
                messages = []
            # The prompt's wording without the annotation's data: what a written answer must not copy.
            parts = cfg.prompts[style].format(**{**context, "captions": "\0", "facts": "\0"}).split("\0")
            prompt = user_prompt(text, system)
            jobs.append(WriteJob(sample_id, style, split, prompt, described[0].media, messages, meta, parts))
        for ann in anns:
            last = max((i for i, m in enumerate(ann.messages) if m.role == "assistant"), default=None)
            if ann.kind != "conversation" or "answer" not in styles or last is None:
                continue
            if ann.media and not cfg.get("writer_sees_media", False):
                tally.counts["skipped_needs_media_writer"] += 1  # a text-only writer would answer blind
                continue
            chat = [{"role": m.role, "content": m.content} for m in ann.messages[:last]]
            if system and chat[0]["role"] != "system":
                chat.insert(0, {"role": "system", "content": system})
            meta = {"source": ann.source, "tasks": ["synth_answer"], "templates": [], "from": ann.id}
            prompt = Prompt(chat, list(ann.media))
            jobs.append(WriteJob(f"answer-{ann.id}", "answer", split, prompt, ann.media, ann.messages[:last], meta))
        if not described and not any(a.kind == "conversation" for a in anns):
            tally.counts["skipped_unsupported_kind"] += len(anns)
    return jobs


def written_messages(
    job: WriteJob, answer: Answer, answer_filter: TextFilter, cfg: DictConfig
) -> list[Message] | Rejection:
    """The sample's messages with what the LLM wrote, or why it is rejected."""
    found = answer_filter.check(answer) or check_copied(answer, job.prompt_parts)

    if found:
        return found
    if job.style != "conversation":
        return cut_off(answer, cfg) or [*job.messages, Message("assistant", answer.strip())]
    cut = bool(answer.cut and cfg.get("drop_truncated", True))  # then its last turn is unfinished
    dialogue = parse_dialogue(answer, cfg.get("max_exchanges", 0), cut)
    if not dialogue:
        return Rejection("unparseable", "no User / Assistant exchange")
    per_turn = dataclasses.replace(answer_filter, min_words=0)  # short questions are fine; the whole is checked above
    for message in dialogue:
        found = per_turn.check(message.content)
        if found:
            return Rejection(found.reason, f"{message.role} turn: {found.detail}")
    return [Message("user", _with_placeholders(dialogue[0].content, job.media)), *dialogue[1:]]


def write_outputs(cfg: DictConfig, calls: LLMCalls) -> tuple[list[tuple[str, Conversation]], dict]:
    if cfg.get("prepare"):
        from mmit.factory import instantiate_source

        instantiate_source(cfg.prepare)
    skipped: Counter = Counter()
    annotations = read_annotations(cfg, skipped)
    tally = Tally()
    tally.counts["annotations"] = len(annotations)
    jobs = write_jobs(cfg, annotations, tally)
    answer_filter = TextFilter(**OmegaConf.to_container(cfg.filters.output))
    samples = []
    for style in (*VISUAL_STYLES, "answer"):
        todo = [j for j in jobs if j.style == style]
        if not todo:
            continue
        answers = calls(style, [j.prompt for j in todo], options_of(cfg, style))
        for job, answer in zip(todo, answers, strict=True):
            tally.counts["proposed"] += 1
            messages = written_messages(job, answer, answer_filter, cfg)
            if isinstance(messages, Rejection):
                tally.reject(messages, answer, f"_{job.style}")
                continue
            samples.append((job.split, Conversation(job.sample_id, messages, job.meta, list(job.media))))
            tally.counts[f"samples_{job.style}"] += 1
            tally.keep({"id": job.sample_id, "prompt": job.prompt.chat[-1]["content"], "written": answer.strip()})
    tally.counts["samples"] = len(samples)
    return samples, {**tally.to_json(), "skipped_annotations": dict(sorted(skipped.items()))}


# --- self-chat -------------------------------------------------------------------------------------


@dataclass
class ChatState:
    index: int
    topic: str
    persona: str
    turns: list[Message] = field(default_factory=list)
    stop: str = ""  # why it ended; "" while it goes on


def load_topics(path: str) -> tuple[list[str], list[str]]:
    """``topics`` (required) and ``personas`` (optional) from a YAML file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise BuildError(f"{path}: not UTF-8 text ({err})") from None
    except yaml.YAMLError as err:  # safe_load: a python/* tag is refused here, never run
        raise BuildError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise BuildError(f"{path}: a mapping with 'topics' (and 'personas') lists, not {json_type(data)}")
    topics = _text_list(data, "topics", path)
    if not topics:
        raise BuildError(f"{path}: needs a non-empty 'topics' list")
    return topics, _text_list(data, "personas", path) or ["a curious person"]


def _text_list(data: dict, key: str, path: str) -> list[str]:
    """``data[key]``: a list of texts, stripped, empty ones dropped (a number YAML read from ``- 1984``
    is its text); a lone string would be read as its characters, so anything else is a BuildError."""
    values = data.get(key)
    if values is None:
        return []
    if not isinstance(values, list):
        raise BuildError(f"{path}: {key!r} must be a list of strings, not {json_type(values)}")
    for value in values:
        if not isinstance(value, str) and not is_number(value):
            raise BuildError(f"{path}: {key!r} must be a list of strings; it holds {json_type(value)} ({value!r})")
    return [str(v).strip() for v in values if str(v).strip()]


def transcript(turns: list[Message]) -> str:
    return "\n".join(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}" for m in turns)


def user_turn_prompt(cfg: DictConfig, chat: ChatState) -> Prompt:
    """The LLM as the user: the conversation with roles swapped, or a transcript to continue."""
    fields = {"topic": chat.topic, "persona": chat.persona, "transcript": transcript(chat.turns)}
    system = cfg.prompts.user_system.format(**fields)
    if cfg.user_prompt == "transcript":
        template = cfg.prompts.user_next if chat.turns else cfg.prompts.user_start
        return user_prompt(template.format(**fields), system)
    swapped = [{"role": "user", "content": cfg.prompts.user_start.format(**fields)}]
    swapped += [{"role": "assistant" if m.role == "user" else "user", "content": m.content} for m in chat.turns]
    return Prompt([{"role": "system", "content": system}, *swapped], [])


def assistant_turn_prompt(cfg: DictConfig, chat: ChatState) -> Prompt:
    system = cfg.prompts.get("assistant_system")
    turns = [{"role": m.role, "content": m.content} for m in chat.turns]
    return Prompt([{"role": "system", "content": system}, *turns] if system else turns, [])


def take_turn(cfg: DictConfig, chat: ChatState, role: str, text: str, openings: InstructionPool, rules: dict) -> None:
    """Add one turn, or end the conversation by the first stop rule that applies."""
    cut = getattr(text, "cut", None) and cfg.get("drop_truncated", True)
    text = clean_turn(text)
    if not text:
        chat.stop = "empty_turn"
        return
    if cut:  # a chat turn may end early: keep its complete sentences
        text = trim_to_sentence(text)
        if not text:
            chat.stop = "truncated_turn"
            return
    lowered = text.lower()
    if role == "user" and not chat.turns:
        found = openings.offer(text)
        if found:
            chat.stop = f"opening_{found.reason}"
            return
    if role == "user" and any(p in lowered for p in rules["stop_phrases"]):
        chat.stop = "stop_phrase"
        return
    found = rules["turn_filter"].check(text)
    if found:
        chat.stop = f"{found.reason}_turn"
        return
    if any(text_rouge_l(text, m.content, beta=1.0) > cfg.stop.repeat_threshold for m in chat.turns):
        chat.stop = "repeated_turn"
        return
    chat.turns.append(Message(role, text))
    exchanges = sum(m.role == "assistant" for m in chat.turns)
    if role == "assistant" and any(p in lowered for p in rules["stop_phrases"]):
        chat.stop = "stop_phrase"
    elif exchanges >= cfg.stop.max_turns:
        chat.stop = "max_turns"
    elif sum(len(m.content.split()) for m in chat.turns) >= cfg.stop.max_words:
        chat.stop = "max_length"


def self_chat(cfg: DictConfig, calls: LLMCalls) -> tuple[list[tuple[str, Conversation]], dict]:
    topics, personas = load_topics(cfg.topics)
    chats = []
    for i in range(cfg.conversations):
        rng = sample_rng(cfg.seed, f"chat{i}")
        chats.append(ChatState(i, topics[i % len(topics)], rng.choice(personas)))
    openings = InstructionPool(TextFilter(**OmegaConf.to_container(cfg.filters.opening)), cfg.filters.rouge_threshold)
    rules = {
        "stop_phrases": [p.lower() for p in cfg.stop.stop_phrases],
        "turn_filter": TextFilter(**OmegaConf.to_container(cfg.filters.turn)),
    }
    for step in range(2 * cfg.stop.max_turns):
        role = "user" if step % 2 == 0 else "assistant"
        active = [c for c in chats if not c.stop]
        if not active:
            break
        build = user_turn_prompt if role == "user" else assistant_turn_prompt
        answers = calls(f"{role} turn {step // 2 + 1}", [build(cfg, c) for c in active], options_of(cfg, role))
        for chat, answer in zip(active, answers, strict=True):
            take_turn(cfg, chat, role, answer, openings, rules)
    tally, samples = Tally(), []
    for chat in chats:
        turns = chat.turns[:-1] if chat.turns and chat.turns[-1].role == "user" else chat.turns
        exchanges = len(turns) // 2
        tally.counts["conversations"] += 1
        tally.counts[f"stop_{chat.stop or 'unfinished'}"] += 1
        if exchanges < cfg.stop.min_turns:
            reason = chat.stop if chat.stop.startswith("opening_") else "too_few_turns"
            tally.reject(Rejection(reason, f"{exchanges} exchanges, stopped by {chat.stop}"), transcript(chat.turns))
            continue
        sample_id = f"self_chat-{chat.index:06d}"
        meta = {"source": "self_chat", "tasks": ["self_chat"], "topic": chat.topic, "persona": chat.persona}
        meta["stop"] = chat.stop
        samples.append((split_of(sample_id, cfg.eval_fraction), Conversation(sample_id, turns, meta)))
        tally.counts["turns"] += exchanges
        tally.keep({"topic": chat.topic, "persona": chat.persona, "stop": chat.stop, "conversation": transcript(turns)})
    tally.counts["samples"] = len(samples)
    return samples, tally.to_json()


# --- shards, manifest, command line --------------------------------------------------------------


def write_sets(cfg: DictConfig, samples: list[tuple[str, Conversation]]) -> dict[str, list[dict]]:
    """Every set's shards, rewritten from scratch (only generation is worth resuming)."""
    out = Path(cfg.out_dir)
    by_set: dict[str, list[Conversation]] = {name: [] for name in SETS}
    for split, conv in samples:
        by_set["train" if split == "train" else "val_seen"].append(conv)
    paths = sorted({(m.path, m.kind) for _, c in samples for m in c.media if m.path})
    media = {path: check_media_file(path, kind) for path, kind in paths}
    storage = Storage(cfg.on_error, cfg.get("resize_max"))
    stats: dict[str, list[dict]] = {}
    for name, convs in by_set.items():
        folder = out / name
        if folder.exists():
            shutil.rmtree(folder)  # shards of an earlier, different run
        if not convs:
            continue
        folder.mkdir(parents=True)
        for index, start in enumerate(range(0, len(convs), cfg.shard_size)):
            path = folder / f"shard-{index:06d}.tar"
            shard = write_shard(path, convs[start : start + cfg.shard_size], media, storage)
            stats.setdefault(name, []).append({**shard, "shard": path.name})
    return stats


# The recipe settings that count or size something: (smallest value, what it is). A synth recipe has
# no schema (mmit.data.recipes composes it as written), so the values are checked here, before any
# file is written: "target=abc" or "shard_size=0" failed deep inside a run, naming no setting.
WHOLE_NUMBERS = {
    "seed": (None, "the random seed"),
    "batch_size": (1, "prompts per LLM call"),
    "shard_size": (1, "samples per shard"),
    "target": (0, "samples to write"),
    "max_rounds": (0, "rounds"),
    "prompts_per_round": (1, "prompts per round"),
    "new_per_prompt": (1, "instructions asked for per prompt"),
    "seed_examples": (0, "seed instructions per prompt"),
    "generated_examples": (0, "generated instructions per prompt"),
    "conversations": (0, "conversations"),
    "max_facts": (0, "QA pairs per image"),
    "max_exchanges": (0, "turns per conversation (0: no limit)"),
}
NO_LIMIT = {"max_facts", "max_exchanges"}  # null: every fact, every turn


def check_settings(cfg: DictConfig) -> None:
    """BuildError naming the first setting of a synth recipe whose value cannot work."""
    for key, (low, what) in WHOLE_NUMBERS.items():
        if key in NO_LIMIT and cfg.get(key) is None:
            continue
        if key in cfg and not is_whole_number(cfg[key], low):
            bound = "a whole number" if low is None else f"a whole number >= {low}"
            raise BuildError(f"{key}={cfg[key]!r}: {what} must be {bound}")
    fraction = cfg.get("eval_fraction", 0.0)
    if not is_number(fraction) or not 0 <= fraction < 1:
        raise BuildError(f"eval_fraction={fraction!r}: the share of samples in val_seen must be a number in [0, 1)")
    if cfg.get("on_error", "raise") not in ON_ERROR:
        raise BuildError(f"on_error={cfg.on_error!r}: must be one of {', '.join(ON_ERROR)}")
    threshold = OmegaConf.select(cfg, "filters.rouge_threshold", default=0.0)
    if not is_number(threshold) or not 0 <= threshold <= 1:
        raise BuildError(f"filters.rouge_threshold={threshold!r}: must be a number in [0, 1]")


def synthesize(cfg: DictConfig, generate: GenerateFn | None = None) -> dict:
    """Run a composed synth recipe; returns the manifest (also written as manifest.json).

    ``generate`` replaces the recipe's LLM (tests pass a scripted one).
    """
    if cfg.get("mode") not in MODES:
        hint = " (recipes without a mode are built by python -m mmit.build)" if not cfg.get("mode") else ""
        raise BuildError(f"the recipe's mode must be one of {MODES}, not {cfg.get('mode')!r}{hint}")
    check_settings(cfg)
    out = Path(cfg.out_dir)
    if (out / "build.json").exists():
        raise BuildError(f"{out} holds an mmit.build dataset; choose another output directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # no manifest until this run's shards are all written
    model_key = json.dumps(
        {"run_dir": cfg.get("run_dir"), "checkpoint": cfg.get("checkpoint")}
        if cfg.get("run_dir")
        else {"model": list(cfg.model), "precision": cfg.precision},
        sort_keys=True,
    )
    calls = LLMCalls(
        out / ".synth" / "calls",
        model_key,
        cfg.batch_size,
        (lambda: generate) if generate else lambda: load_writer(cfg),
    )
    run = {"self_instruct": self_instruct, "write_outputs": write_outputs, "self_chat": self_chat}[cfg.mode]
    samples, generation = run(cfg, calls)
    stats = write_sets(cfg, samples)
    hashes = source_hashes(cfg)
    for key in ("seed_tasks", "topics"):
        if cfg.get(key):
            hashes[cfg[key]] = file_sha256(Path(cfg[key]))
    manifest = {
        **recipe_manifest(cfg, hashes, generation.pop("skipped_annotations", {}), stats),
        "generation": {
            "mode": cfg.mode,
            "model": json.loads(model_key),
            "options": {stage: options_of(cfg, stage).to_json() for stage in cfg.generation},
            "batches": dict(sorted(calls.batches.items())),
            **generation,
        },
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False))
    return manifest


def format_generation(manifest: dict) -> str:
    g = manifest["generation"]
    counts = {k: v for k, v in g.items() if isinstance(v, int)}
    lines = [f"  generation ({g['mode']}): " + ", ".join(f"{k} {v}" for k, v in counts.items())]
    lines.append(f"  rejected: {g['rejected'] or 'none'}")
    lines.append(f"  LLM batches: {g['batches'] or 'none'}")
    for example in g["examples"]["kept"][:3]:
        lines.append("  example: " + json.dumps(example, ensure_ascii=False)[:300])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    def report(manifest: dict, out: Path) -> str:
        return f"{format_manifest(manifest, out)}\n{format_generation(manifest)}"

    recipe_command("mmit.synth", __doc__.splitlines()[0], synthesize, report, argv)
