"""Where training metrics go: ``metrics.jsonl`` (the record the reports and plots read) and
TensorBoard event files in the run directory (``tensorboard --logdir <run dir>``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mmit.data.samples import BAD_JSON, is_whole_number
from mmit.paths import atomic_write_text


class MetricsLog:
    """Appends records; resuming at step N first drops what a killed run logged after N.

    ``resume_step=0`` is a start from scratch (no checkpoint yet): a killed run's records, its
    step-0 evaluation included, are dropped, since this run logs them again.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step > 0 else []
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote after the checkpoint it resumes from (all of
            # them for a start from scratch).
            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        """One record: ``step`` and named numbers (``train/loss``, ``eval/seen/loss``, ...)."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line cut short by a crash (the last one) is ignored."""
    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 at byte {err.start}") from None
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except BAD_JSON:
            if number != len(lines):
                raise ValueError(f"{path}:{number}: not a JSON line") from None
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if not is_whole_number(step):
            raise ValueError(f"{path}:{number}: a metrics record is an object with a whole-number 'step'")
        records.append(record)
    return records
