"""Issue 17 item 3: progress in logs -- plain lines every N seconds when stderr is not a
terminal (stage, i/N, rate, ETA, key metrics), on by default."""

from __future__ import annotations

import io
import re

import pytest

from emrl.cli import main
from emrl.errors import ConfigError
from emrl.progress import LogProgress, format_duration, progress, progress_mode


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_every_interval_with_rate_eta_and_metrics():
    clock, out = _Clock(), io.StringIO()
    bar = LogProgress(total=10, desc="emrl sft", unit="update", interval=30, stream=out, clock=clock)
    clock.t += 2.0
    bar.set_postfix({"loss": "1.23"})
    bar.update(1)  # the first update is always reported
    for _ in range(3):  # 3 more updates within the interval: no line
        clock.t += 5.0
        bar.update(1)
    clock.t += 20.0  # 37 s after the first line's 2 s: a line
    bar.set_postfix(loss="0.9", heldout_greedy_acc="0.31")
    bar.update(1)
    bar.close()  # nothing new since the last line: no extra line
    lines = out.getvalue().splitlines()
    assert lines == [
        "[emrl sft] update 1/10 (10%) | 0.50 update/s | elapsed 2s | ETA 18s | loss=1.23",
        "[emrl sft] update 5/10 (50%) | 0.14 update/s | elapsed 37s | ETA 37s | loss=0.9 heldout_greedy_acc=0.31",
    ]
    bar2 = LogProgress(total=4, desc="x", unit="step", interval=30, stream=out, clock=clock, initial=2)
    clock.t += 1.0
    bar2.update(1)
    clock.t += 1.0
    bar2.update(1)
    bar2.close()  # the last count is always reported
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("[x] step 4/4 (100%) | 1.0 step/s | elapsed 2s") and "ETA" not in last


def test_mode_follows_the_terminal_and_emrl_progress(monkeypatch):
    monkeypatch.delenv("EMRL_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "log" and progress_mode(_Tty()) == "bar"
    monkeypatch.setenv("EMRL_PROGRESS", "1")
    assert progress_mode(io.StringIO()) == "log"
    monkeypatch.setenv("EMRL_PROGRESS", "bar")
    assert progress_mode(io.StringIO()) == "bar"
    monkeypatch.setenv("EMRL_PROGRESS", "log")
    assert progress_mode(_Tty()) == "log"
    monkeypatch.setenv("EMRL_PROGRESS", "0")
    assert progress_mode(_Tty()) == "off"
    assert progress(total=3).disable
    monkeypatch.setenv("EMRL_PROGRESS", "sometimes")
    with pytest.raises(ConfigError, match="EMRL_PROGRESS"):
        progress_mode()
    monkeypatch.setenv("EMRL_PROGRESS", "log")
    monkeypatch.setenv("EMRL_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="EMRL_PROGRESS_INTERVAL"):
        progress(total=3)
    assert format_duration(59) == "59s" and format_duration(185) == "3m05s" and format_duration(3720) == "1h02m"


def test_lm_sft_logs_progress_lines_when_stderr_is_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EMRL_PROGRESS", raising=False)  # the default, as a user has it
    monkeypatch.setenv("EMRL_PROGRESS_INTERVAL", "0")
    rc = main(["lm", "sft", "--output-dir", str(tmp_path / "sft"), "--max-steps", "3", "--batch-size", "4",
               "--num-train", "8", "--num-eval", "4", "--eval-num-prompts", "4", "--eval-samples", "0",
               "--num-threads", "1"])
    assert rc == 0
    err = capsys.readouterr().err.splitlines()
    lines = [x for x in err if x.startswith("[emrl sft]")]
    assert len(lines) == 3, err
    for i, line in enumerate(lines, 1):
        assert re.match(rf"\[emrl sft\] update {i}/3 \({100 * i / 3:.0f}%\) \| [0-9.]+ update/s \| elapsed ", line)
        assert "loss=" in line
    assert "ETA" in lines[0] and "ETA" not in lines[-1]


def test_control_train_logs_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("EMRL_PROGRESS", raising=False)
    monkeypatch.setenv("EMRL_PROGRESS_INTERVAL", "0")
    rc = main(["control", "train", "--env", "CartPole-v1", "--total-steps", "512", "--eval-episodes", "2",
               "--output-dir", str(tmp_path / "run")])
    assert rc == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[ppo CartPole-v1]")]
    assert lines[0].startswith("[ppo CartPole-v1] step 256/512 (50%)")
    assert lines[-1].startswith("[ppo CartPole-v1] step 512/512 (100%)")
    assert "eval_return(deterministic, 2 ep)=" in lines[-1]
