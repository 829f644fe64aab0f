"""``em-tutorial ablate``: the table's files, and resumption run by run."""

import csv
import json

import pytest
import torch

from em_tutorial import cli
from em_tutorial.segmentation.ablation import (
    COLUMNS,
    backbone_path,
    plan_runs,
    read_rows,
    run_ablation,
)
from em_tutorial.segmentation.checkpoint import load_checkpoint


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_quick_ablation_writes_table_and_resumes_only_missing_runs(tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["ablate", "--out", str(out), "--quick", "--seeds", "1", "--heads", "none", "pooling",
            "--no-progress"]
    assert cli.main(argv) == 0
    rows = _rows(out / "ablation.csv")
    assert tuple(rows[0]) == COLUMNS
    assert sorted((r["task"], r["head"], r["seed"]) for r in rows) == [
        ("context", "none", "0"), ("context", "pooling", "0"),
        ("control", "none", "0"), ("control", "pooling", "0")]
    for row in rows:
        assert 0.0 <= float(row["miou"]) <= 1.0
        assert (row["fragment_iou"] != "") == (row["task"] == "context")
    table = (out / "ablation.md").read_text()
    assert "| context | image pooling | 1 |" in table and "--quick" in table
    assert "Decision rules" in table and "far-digit probe" in table
    # The context runs started from the backbone that control-none-seed0 learned.
    control = load_checkpoint(out / "runs" / "control-none-seed0" / "checkpoint.pt")["model"]
    backbone = torch.load(backbone_path(out, 0), weights_only=True)
    assert backbone and all(torch.equal(control["backbone." + name], tensor)
                            for name, tensor in backbone.items())  # fmt: skip
    assert json.loads(next(open(out / "runs" / "context-none-seed0" / "log.jsonl")))[
        "config"]["pretrained_backbone"] == str(backbone_path(out, 0))
    assert (out / "ablation.png").stat().st_size > 1000

    # Forget one finished run: a second call trains that one only and keeps the others' rows.
    kept = [r for r in rows if (r["task"], r["head"]) != ("control", "pooling")]
    with open(out / "ablation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    (out / "ablation.md").unlink()
    finished = run_ablation(out, seeds=1, heads=("none", "pooling"), quick=True, progress=False)
    assert len(finished) == 4
    again = {(r["task"], r["head"]): r for r in _rows(out / "ablation.csv")}
    for row in kept:
        assert again[(row["task"], row["head"])] == row  # untouched, not retrained
    assert ("control", "pooling") in again and (out / "ablation.md").exists()
    assert len(read_rows(out / "ablation.csv")) == 4


def test_default_heads_per_task():
    runs = plan_runs(["control", "context"], None, 1)
    assert [r.name for r in runs] == [
        "control-none-seed0", "control-emau-seed0", "context-none-seed0", "context-emau-seed0",
        "context-emau_gamma0-seed0", "context-nonlocal-seed0", "context-pooling-seed0"]


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        plan_runs(["context"], ["emau", "fancy"], 1)
    with pytest.raises(ValueError, match="seeds"):
        plan_runs(["context"], ["emau"], 0)
    assert [r.name for r in plan_runs(["control"], ["none"], 2)] == [
        "control-none-seed0", "control-none-seed1"]


def test_context_alone_first_trains_the_backbone_source(tmp_path):
    # Asked for the context task only, the ablation still trains control-none of each seed
    # first (its backbone is where the context runs start) and records it as a control row.
    rows = run_ablation(tmp_path, seeds=[3], tasks=("context",), heads=("emau",), quick=True,
                        progress=False)  # fmt: skip
    assert [(r["task"], r["head"], r["seed"]) for r in rows] == [("context", "emau", 3)]
    recorded = sorted((r["task"], r["head"], r["seed"]) for r in read_rows(tmp_path / "ablation.csv"))
    assert recorded == [("context", "emau", 3), ("control", "none", 3)]
    assert backbone_path(tmp_path, 3).exists()
