"""A folder that mmit.eval or mmit.export writes whole replaces only what that command wrote there
before: a folder of the user's, a run folder or the current one is refused, untouched, before any
model loads (mmit.eval --out used to delete whatever folder it was given)."""

from __future__ import annotations

import pytest

from mmit.paths import OUTPUT_MARK, OutputFolderError, atomic_dir


def _user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("keep")
    return path


def test_a_folder_of_other_files_is_refused_and_left_as_it_was(tmp_path):
    victim = _user_folder(tmp_path / "victim")
    with pytest.raises(
        OutputFolderError,
        match=r"victim holds files that mmit.eval did not write, by its .mmit-output mark \(notes.txt\); .*delete it",
    ):
        with atomic_dir(victim, "mmit.eval") as tmp:
            (tmp / "metrics.json").write_text("{}")
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["victim"]  # no temporary folder left


def test_its_own_earlier_output_and_an_empty_folder_are_replaced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for text in ("first", "second"):
        with atomic_dir(out, "mmit.eval") as tmp:
            (tmp / "metrics.json").write_text(text)
        assert (out / "metrics.json").read_text() == text
    assert (out / OUTPUT_MARK).read_text() == "mmit.eval\n"
    with pytest.raises(OutputFolderError, match="mmit.export did not write"):  # another command's output
        with atomic_dir(out, "mmit.export"):
            pass


def test_a_file_is_refused_and_a_folder_mmit_chose_is_replaced_unmarked(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(OutputFolderError, match="afile is not a folder"):
        with atomic_dir(tmp_path / "afile", "mmit.eval"):
            pass
    assert (tmp_path / "afile").read_text() == "mine"
    legacy = _user_folder(tmp_path / "eval_step-1")  # written by an mmit.eval without marks, where it chose
    with atomic_dir(legacy, "mmit.eval", guard=False) as tmp:
        (tmp / "metrics.json").write_text("{}")
    assert sorted(p.name for p in legacy.iterdir()) == [OUTPUT_MARK, "metrics.json"]


def test_eval_and_export_refuse_before_loading_anything(tmp_path, monkeypatch):
    from mmit.eval import main as evaluate
    from mmit.export import main as export

    victim = _user_folder(tmp_path / "victim")
    with pytest.raises(SystemExit, match=r"mmit.eval: .*victim holds files that mmit.eval did not write"):
        evaluate([str(tmp_path / "no_run"), "--out", str(victim)])  # refused before the run is even read
    monkeypatch.chdir(victim)
    with pytest.raises(SystemExit, match=r"mmit.eval: .*victim holds files that mmit.eval did not write"):
        evaluate([str(tmp_path / "no_run"), "--out", "."])
    _user_folder(tmp_path / "exports")
    _user_folder(tmp_path / "exports" / "merged")
    with pytest.raises(SystemExit, match=r"mmit.export: .*merged holds files that mmit.export did not write"):
        export([str(tmp_path / "no_run"), "--out", str(tmp_path / "exports"), "--format", "merged"])
    with pytest.raises(SystemExit, match=r"mmit.export: --out .*notes.txt is a file, not a folder"):
        export([str(tmp_path / "no_run"), "--out", str(victim / "notes.txt")])
    assert [p.name for p in victim.iterdir()] == ["notes.txt"]
    assert (tmp_path / "exports" / "merged" / "notes.txt").read_text() == "keep"


def test_a_report_or_adapter_from_before_the_marks_is_still_replaced(tmp_path):
    from mmit.eval import EARLIER_REPORT
    from mmit.export import EARLIER_ADAPTER, EXPORT_WRITER

    for writer, files in (("mmit.eval", EARLIER_REPORT), (EXPORT_WRITER, EARLIER_ADAPTER)):
        earlier = tmp_path / writer
        earlier.mkdir()
        for name in files:
            (earlier / name).write_text("{}")
        with atomic_dir(earlier, writer, earlier=files) as tmp:
            (tmp / "new.json").write_text("{}")
        assert sorted(p.name for p in earlier.iterdir()) == [OUTPUT_MARK, "new.json"]
