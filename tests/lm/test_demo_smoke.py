"""Issue 4 part 8: `emrl demo` end to end with a tiny override config (seconds, not the
real measured demo): SFT -> V-MPO -> report.md + PNG + summary.json."""

from __future__ import annotations

import json

import pytest

from emrl.cli import main

TINY = """
eval_num_prompts: 6
eval_samples: 2
num_threads: 1
sft:
  max_steps: 3
  batch_size: 8
  warmup_steps: 0
rl_minutes: 5
rl:
  max_steps: 2
  batch_size: 4
  num_samples: 2
  eval_every: 1
sft_continued:
  max_steps: 3
  batch_size: 8
  eval_every: 1
"""


def test_demo_writes_report_summary_and_plot(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--config", str(cfg), "--seed", "1"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_sft", "accuracy_rl", "sampled_accuracy_sft", "sampled_accuracy_rl",
                "accuracy_continued_sft", "sampled_accuracy_continued_sft"):
        assert 0.0 <= s[key] <= 1.0, key
    # the control starts from the same SFT model at the SFT stage's final learning rate
    c = s["continued_sft_config"]
    assert c["model"].endswith("sft/final") and s["continued_sft_updates"] == 3
    assert c["learning_rate"] == pytest.approx(s["sft_config"]["learning_rate"] * s["sft_config"]["min_lr_ratio"])
    assert isinstance(s["sft_on_plateau"], bool)
    assert s["num_eval_prompts"] == 6 and s["eval_samples"] == 2 and s["seed"] == 1
    assert s["wall_time_s"] > 0 and s["sft_updates"] == 3 and s["rl_updates"] == 2
    assert s["rl_config"]["algo"] == "vmpo" and s["rl_config"]["model"].endswith("sft/final")
    png = out / "learning_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "learning_curves.png" in report and "V-MPO" in report
    # both stages evaluated the same held-out prompts
    sft_eval = json.loads((out / "sft" / "eval.json").read_text())
    rl_eval = json.loads((out / "rl" / "eval.json").read_text())
    assert sft_eval["num_prompts"] == rl_eval["num_prompts"] == 6
    assert "accuracy" in capsys.readouterr().out
    # running again into the same directory replaces the earlier demo
    assert main(["demo", "--output-dir", str(out), "--config", str(cfg), "--seed", "1"]) == 0


def test_demo_refuses_foreign_directory(tmp_path):
    from emrl.errors import EmrlError
    from emrl.lm.demo import DemoConfig, run_demo

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(EmrlError, match="not from an emrl demo"):
        run_demo(DemoConfig(), tmp_path)
