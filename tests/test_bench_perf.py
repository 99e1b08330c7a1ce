"""tools/bench_perf.py (bench.perf): a --quick run writes the report and the raw numbers (no speed assertions)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from bench.llm import lora_step_flops
from bench.models import TINY_LLM, text_model


@pytest.fixture(scope="module")
def perf():
    environ = dict(os.environ)  # importing bench.perf sets defaults (OMP_WAIT_POLICY, ...) for its own runs
    from bench import perf

    yield perf
    os.environ.clear()
    os.environ.update(environ)


@pytest.mark.slow
def test_quick_run_writes_tables_and_json(perf, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    results = perf.main(["--quick", "--only", "B1,B2,B3,B6", "--device", "cpu", "--out", str(out)])
    assert [r.id for r in results] == ["B1", "B2", "B3", "B6"]

    text = out.read_text()
    for heading in ("## Machine", "## Summary", "## B1:", "## B2:", "## B3:", "## B6:"):
        assert heading in text
    assert "| CPU |" in text and "torch" in text
    assert "| variant | step (s, median) |" in text
    assert "| variant | trainable parameters | training memory (MiB) |" in text

    raw = json.loads(out.with_suffix(".json").read_text())
    assert raw["machine"]["cores"] >= 1
    by_id = {r["id"]: r for r in raw["results"]}
    for bench_id in ("B1", "B2"):  # the same set through mmit's loop on both sides
        r = by_id[bench_id]
        assert r["status"] == "ok", r["notes"]
        assert [row[0] for row in r["rows"]] == list(r["raw"]["epoch_stats"])
        stats = list(r["raw"]["epoch_stats"].values())
        assert all(s["samples"] == 8 for s in stats)  # one epoch each, every sample once
        assert stats[0]["real_tokens"] == stats[1]["real_tokens"] > 0
        assert r["raw"]["ideal_gain"] >= 1 and r["ratio"] > 0 and r["met"] in (True, False)
    assert by_id["B1"]["raw"]["ideal_gain"] == pytest.approx(
        by_id["B1"]["raw"]["epoch_stats"]["padded"]["computed_tokens"]
        / by_id["B1"]["raw"]["epoch_stats"]["padded"]["real_tokens"]
    )
    assert by_id["B2"]["raw"]["encoder_share"] > 0
    for bench_id in ("B3", "B6"):
        r = by_id[bench_id]
        assert r["status"] == "ok", r["notes"]
        assert r["ratio"] > 0 and len(r["rows"]) == 2
    for row in by_id["B3"]["rows"]:  # step time, range, steps, memory above the model, training memory
        assert row[1] > 0 and row[3] > 0 and row[-1] > 0
        # A tiny model's step adds almost nothing, and the kernel syncs RSS counters lazily: a delta
        # near zero can read a little below it.
        assert row[4] > -2
    for row in by_id["B6"]["rows"]:  # trainable parameters, training memory, process peak
        assert row[1] > 0 and row[2] > 0 and row[3] > row[2]
    b3 = by_id["B3"]["raw"]
    assert b3["loss_values"]["labelled"] == pytest.approx(b3["loss_values"]["full"], rel=1e-4)
    lora, full = (by_id["B6"]["raw"][v] for v in ("lora", "full"))
    assert 0 < lora["trainable_parameters"] < full["trainable_parameters"]
    assert by_id["B6"]["met"] in (True, False)


def test_lora_step_flops_counts_each_weight_once():
    model = text_model(TINY_LLM, "lora", "cpu")
    count = lora_step_flops(model, batch=2, seq=16, labelled=8)
    decoder = model.base_llm.get_decoder()
    lora = sum(p.numel() for n, p in decoder.named_parameters() if "lora_" in n)
    linear = sum(m.weight.numel() for m in decoder.modules() if isinstance(m, torch.nn.Linear))
    assert count["lora_params"] == lora > 0
    assert count["frozen_linear_params"] + count["lora_params"] == linear
    shape = TINY_LLM
    d_attn = shape["num_attention_heads"] * shape["head_dim"]
    per_token = 4 * count["frozen_linear_params"] + 6 * lora + 6 * shape["num_hidden_layers"] * 16 * d_attn
    assert count["flops"] == 32 * per_token + 4 * shape["vocab_size"] * shape["hidden_size"] * 8
