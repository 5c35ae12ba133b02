"""Nothing lost: the final checkpoint precedes the final evaluation, stale temporary
directories are cleaned, a kill during ``final/`` never duplicates the final record."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lm"))
from trainer_helpers import make_trainer, sft_config  # noqa: E402

from emrl.control.config import ControlConfig  # noqa: E402
from emrl.control.train import train  # noqa: E402
from emrl.errors import EmrlError  # noqa: E402
from emrl.metrics import read_metrics  # noqa: E402


class FlakyReward:
    """A reward that raises while ``broken`` (SFT calls it only in evaluation)."""

    def __init__(self) -> None:
        self.broken = True

    def __call__(self, prompts, completions, **_):
        if self.broken:
            raise RuntimeError("reward service down")
        return [0.0] * len(completions)


def _strip(records):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/")) and k != "wall_time"}
            for r in records]


def test_lm_final_evaluation_failure_loses_no_update(tmp_path):
    cfg = sft_config(max_steps=3, eval_at_start=False)  # the final evaluation is the one that fails
    whole = make_trainer(cfg, tmp_path, out="whole", reward=lambda p, c, **_: [0.0] * len(c))
    whole.train()
    flaky = FlakyReward()
    with pytest.raises(EmrlError, match="reward service down"):
        make_trainer(cfg, tmp_path, out="cut", reward=flaky).train()
    cut = tmp_path / "cut"
    assert (cut / "checkpoint-3").is_dir() and not (cut / "final").exists()  # every update kept
    flaky.broken = False
    resumed = make_trainer(cfg, tmp_path, out="cut", resume=True, reward=flaky)
    assert resumed.step == 3  # nothing to redo
    resumed.train()
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert _strip(a) == _strip(b)  # the same records, the final one once
    assert (cut / "final").is_dir() and (cut / "eval.json").is_file()


def test_lm_kill_during_final_write_leaves_one_final_record_and_no_temp_dirs(tmp_path):
    cfg = sft_config(max_steps=2, eval_at_start=False)
    make_trainer(cfg, tmp_path).train()
    run = tmp_path / "run"
    before = read_metrics(run / "metrics.jsonl")
    # killed while writing final/: the temp dir of that write and of a checkpoint write remain
    shutil.move(run / "final", run / ".final.abc123.tmp")
    (run / ".checkpoint-3.def456.tmp").mkdir()
    (run / ".metrics.jsonl.789.tmp").write_text("{}")
    make_trainer(cfg, tmp_path, resume=True).train()
    after = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in after] == [r["step"] for r in before] == [1, 2]
    assert sum("eval/accuracy" in r for r in after) == 1
    assert _strip(after) == _strip(before)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []
    assert (run / "final").is_dir()


def _ccfg(**kw) -> ControlConfig:
    base = dict(env="CartPole-v1", total_steps=512, num_envs=2, unroll_length=64, epochs=1, eval_every=0,
                eval_episodes=1, save_every=256, keep_checkpoints=5)
    base.update(kw)
    return ControlConfig(**base)


def test_control_final_evaluation_failure_loses_no_update(tmp_path, monkeypatch):
    import emrl.control.train as ct

    train(_ccfg(), tmp_path / "whole")
    real = ct.evaluate

    def down(*a, **k):
        raise EmrlError("evaluation env unavailable")

    monkeypatch.setattr(ct, "evaluate", down)
    with pytest.raises(EmrlError, match="unavailable"):
        train(_ccfg(), tmp_path / "cut")
    cut = tmp_path / "cut"
    assert (cut / "checkpoint-4").is_dir() and not (cut / "final").exists()
    monkeypatch.setattr(ct, "evaluate", real)
    train(_ccfg(), cut, resume=True)
    a, b = read_metrics(tmp_path / "whole" / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert _strip(a) == _strip(b)


def test_control_kill_during_final_write_leaves_one_final_record(tmp_path):
    out = tmp_path / "run"
    train(_ccfg(), out)
    before = read_metrics(out / "metrics.jsonl")
    shutil.move(out / "final", out / ".final.abc.tmp")
    (out / ".checkpoint-2.x.tmp").mkdir()
    train(_ccfg(), out, resume=True)
    after = read_metrics(out / "metrics.jsonl")
    assert _strip(after) == _strip(before)
    assert sum("eval/return" in r for r in after) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_overwrite_replaces_the_old_run_once_the_new_one_is_valid(tmp_path):
    out = tmp_path / "run"
    train(_ccfg(total_steps=256), out)
    (out / "notes.txt").write_text("old")
    train(_ccfg(total_steps=256, seed=1), out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "final").is_dir()
