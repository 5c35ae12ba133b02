"""Experiment trackers (``--report-to``): real offline W&B runs and a real trackio local
store, for an LM run from the command line and a control run from Python."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from emrl.errors import ConfigError
from emrl.metrics import MetricsWriter, read_metrics, resolve_report_to


def test_report_to_names_are_checked():
    assert resolve_report_to("wandb, trackio") == ["wandb", "trackio"]
    assert resolve_report_to(["none"]) == []
    assert resolve_report_to([], tensorboard=True) == ["tensorboard"]  # the older flag is an alias
    assert resolve_report_to(["tensorboard"], tensorboard=True) == ["tensorboard"]
    with pytest.raises(ConfigError, match="Did you mean: wandb"):
        resolve_report_to(["wandbb"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        resolve_report_to(["none", "wandb"])
    from emrl.control.config import ControlConfig
    from emrl.lm.train_config import RLConfig

    with pytest.raises(ConfigError, match="unknown tracker"):
        RLConfig(report_to=["tensorbord"]).validate()
    with pytest.raises(ConfigError, match="unknown tracker"):
        ControlConfig(report_to=["mlflo"]).validate()


def test_report_to_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsWriter(tmp_path / "metrics.jsonl", report_to=["tensorboard"]) as w:
        w.log(step=1, loss=0.5)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def _wandb_records(run_dir: Path) -> list[Path]:
    return list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_lm_train_reports_to_wandb_offline_and_trackio(tmp_path):
    """`emrl lm train --report-to wandb,trackio`: W&B's offline run lands in DIR/wandb and
    trackio's local store holds one row per logged update with metrics.jsonl's values."""
    pytest.importorskip("wandb")
    pytest.importorskip("trackio")
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "TRACKIO_DIR": str(tmp_path / "trackio"),
           "EMRL_PROJECT": "emrl-test", "EMRL_PROGRESS": "0", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "emrl.cli", "lm", "train", "--algo", "vmpo", "--model", "tiny",
           "--output-dir", str(run), "--max-steps", "2", "--batch-size", "2", "--num-samples", "2",
           "--max-new-tokens", "2", "--num-train", "8", "--num-eval", "2", "--eval-num-prompts", "2",
           "--eval-samples", "0", "--num-threads", "1", "--report-to", "wandb,trackio"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _wandb_records(run)
    assert len(records) == 1 and records[0].stat().st_size > 0
    logged = read_metrics(run / "metrics.jsonl")
    db = sqlite3.connect(tmp_path / "trackio" / "emrl-test.db")
    rows = db.execute("select run_name, step, metrics from metrics order by step").fetchall()
    assert [r[1] for r in rows] == [r["step"] for r in logged] == [0, 1, 2]  # step 0: the start model
    assert {r[0] for r in rows} == {"run"}
    first = json.loads(rows[1][2])
    assert first["reward/mean"] == pytest.approx(logged[1]["reward/mean"])
    config = json.loads(db.execute("select config from configs").fetchone()[0])
    assert config["algo"] == "vmpo" and config["max_steps"] == 2


def test_control_train_reports_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from emrl.control.config import ControlConfig
    from emrl.control.train import train

    cfg = ControlConfig(total_steps=512, eval_episodes=1, eval_every=0, save_every=0,
                        report_to=["wandb"])
    train(cfg, tmp_path / "run")
    records = _wandb_records(tmp_path / "run")
    assert len(records) == 1 and records[0].stat().st_size > 0


def test_mlflow_writes_a_file_store_in_the_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from emrl.lm.train_config import RLConfig

    with MetricsWriter(tmp_path / "run" / "metrics.jsonl", report_to=["mlflow"], config=RLConfig()) as w:
        for step in (1, 2, 3):
            w.log(step=step, **{"reward/mean": step / 10})
    series = list((tmp_path / "run" / "mlruns").glob("*/*/metrics/reward/mean"))
    assert len(series) == 1
    lines = [line.split() for line in series[0].read_text().splitlines()]
    assert [(float(v), int(s)) for _, v, s in lines] == [(0.1, 1), (0.2, 2), (0.3, 3)]
    params = list((tmp_path / "run" / "mlruns").glob("*/*/params/algo"))
    assert params and params[0].read_text().strip() == "vmpo"


def test_a_tracker_that_is_not_installed_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from emrl.errors import EmrlError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(EmrlError, match=r"pip install 'emrl\[trackers\]'"):
        MetricsWriter(tmp_path / "metrics.jsonl", report_to=["mlflow"])
