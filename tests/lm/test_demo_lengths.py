"""Issue 17 item 1: ``emrl demo --quick`` / ``--sft-max-steps`` / ``--rl-max-steps`` set the
stages' lengths (given on the command line, passed to the demo as sft/rl overrides)."""

from __future__ import annotations

import json

from emrl.cli import QUICK_RL_STEPS, QUICK_SFT_STEPS, main

TINY = """
eval_num_prompts: 4
eval_samples: 2
num_threads: 1
sft:
  batch_size: 8
  warmup_steps: 0
  max_steps: 50
rl:
  batch_size: 2
  num_samples: 2
  eval_every: 1
"""


def test_demo_step_options_override_the_stages(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "demo"
    rc = main(["demo", "--output-dir", str(out), "--config", str(cfg), "--quick",
               "--sft-max-steps", "2", "--rl-max-steps", "1"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["sft_updates"] == 2 and s["rl_updates"] == 1  # the options win over the YAML and --quick
    assert s["sft_config"]["max_steps"] == 2 and s["sft_config"]["batch_size"] == 8  # YAML kept
    assert s["sft_config"]["eval_every"] == 1  # --quick: a few points on the curves
    assert s["rl_config"]["eval_every"] == 1 and s["rl_config"]["num_samples"] == 2
    assert "SFT of the tiny model (2 updates)" in capsys.readouterr().out
    assert QUICK_SFT_STEPS >= 100 and QUICK_RL_STEPS >= 10


def test_demo_step_options_refuse_non_positive(capsys):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--sft-max-steps", "0"])
    assert "expected a whole number >= 1, got '0'" in capsys.readouterr().err


def test_demo_sft_fits_the_demonstrations_and_vmpo_samples_the_larger_prompt_set(tmp_path):
    """Issue 10 item 5: SFT (and its continued-SFT control) on ``demonstrations`` reference
    answers, V-MPO on ``rl_prompts`` prompts of the same task (the demonstrations first)."""
    import pytest

    from emrl.errors import EmrlError
    from emrl.lm.demo import DemoConfig, _stage_configs

    sft, rl, cont = _stage_configs(DemoConfig(), tmp_path)
    assert (sft.num_train, rl.num_train) == (1000, 5000)
    assert cont.num_train is None and cont.task is None  # the SFT model's saved task: its 1000
    assert rl.model == cont.model == str(tmp_path / "sft" / "final")
    sft, rl, _ = _stage_configs(DemoConfig(demonstrations=20, rl_prompts=50), tmp_path)
    assert (sft.num_train, rl.num_train) == (20, 50)
    with pytest.raises(EmrlError, match="demonstrations and rl_prompts must be >= 1"):
        _stage_configs(DemoConfig(demonstrations=0), tmp_path)
