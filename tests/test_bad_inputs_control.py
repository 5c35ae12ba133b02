"""Bad-input catalogue, control (`emrl control train|eval`) and the config layer.

Each case: exit status 2, one ``error:`` line naming what is wrong (and what was
expected), no traceback, and the run directory unchanged or absent.
"""

from __future__ import annotations

import shutil

import pytest
import yaml
from bad_input_helpers import (
    CONTROL_SMALL,
    assert_clear_error,
    copy_run,
    fingerprint,
    run_cli,
    write_module,
)

from emrl.cli import main
from emrl.config import build_config
from emrl.control.config import ControlConfig
from emrl.errors import ConfigError
from emrl.lm.train_config import RLConfig, SFTConfig
from emrl.metrics import read_metrics

CUSTOM_ENV = '''
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    """Walk right to the end of a corridor of 5 cells (reward 1 there)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (5,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.pos = 0

    def _obs(self):
        o = np.zeros(5, np.float32)
        o[self.pos] = 1.0
        return o

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action):
        self.pos = max(0, min(4, self.pos + (1 if action == 1 else -1)))
        done = self.pos == 4
        return self._obs(), float(done), done, False, {}


gym.register(id="EmrlCorridor-v0", entry_point=Corridor, max_episode_steps=20)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished small CartPole run (2 updates, checkpoints 1 and 2, final/)."""
    out = tmp_path_factory.mktemp("control") / "run"
    assert main(["control", "train", *CONTROL_SMALL, "--output-dir", str(out)]) == 0
    return out


def _train(out, *extra):
    return ["control", "train", *CONTROL_SMALL, "--output-dir", out, *extra]


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--init-std", "-1"], ["init_std must be > 0, got -1.0"]),
    (["--log-every", "0"], ["log_every must be >= 1, got 0"]),
    (["--num-envs", "0"], ["num_envs must be >= 1"]),
    (["--gamma", "1.5"], ["gamma must be in [0, 1]"]),
    (["--learning-rate", "0"], ["learning_rate must be > 0"]),
    (["--lr", "0"], ["learning_rate must be > 0"]),  # the old name still works
    (["--max-grad-norm", "0"], ["max_grad_norm must be > 0"]),
    (["--eval-every", "-1"], ["eval_every must be >= 0"]),
    (["--target-kl", "-0.1"], ["target_kl must be > 0 (or None)"]),
    (["--hidden-sizes", "64,0"], ["hidden_sizes must be a non-empty list of sizes >= 1"]),
    (["--num-minibatches", "3"], ["must be divisible by num_minibatches = 3"]),
    (["--top-fraction", "0"], ["top_fraction must be in (0, 1]"]),
    (["--total-steps", "many"], ["'total_steps' expects int, got 'many'"]),
    (["--core-kwargs", '{"a": 1'], ["--core-kwargs", "expected a YAML mapping"]),
    (["--core-kwargs", "[1, 2]"], ["--core-kwargs", "expected a YAML mapping"]),
    (["--env", "CartPol-v1"], ["unknown environment id 'CartPol-v1'", "CartPole-v1"]),
    (["--env", "no_such_env_module_xyz:Foo"], ["cannot import module 'no_such_env_module_xyz' (not found)"]),
    (["--env", "bsuite/memory_len/x"], ["bsuite"]),
    (["--lerning-rate", "1"], ["unknown option '--lerning-rate'"]),
    (["--totl-steps", "1"], ["unknown option '--totl-steps'", "Did you mean: --total-steps"]),
], ids=lambda v: "_".join(v)[:40] if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_bad_control_option(tmp_path, capsys, extra, fragments):
    out = tmp_path / "run"
    rc, _, err = run_cli(_train(out, *extra), capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(out) is None


@pytest.mark.parametrize(("yaml_text", "fragments"), [
    ("vectorization: threads\n", ["'vectorization'", "must be one of sync, async", "'threads'"]),
    ("algo: ppoo\n", ["'algo'", "must be one of ppo, vmpo", "Did you mean: ppo"]),
    ("encoder: vit\n", ["'encoder'", "must be one of nature, resnet"]),
    ("vmpo_targets: td\n", ["'vmpo_targets'", "must be one of nstep, gae"]),
    ("core_kwargs: [1]\n", ["'core_kwargs' expects a mapping"]),
    ("totl_steps: 5\n", ["unknown field 'totl_steps'", "total_steps"]),
])
def test_bad_control_yaml(tmp_path, capsys, yaml_text, fragments):
    y = tmp_path / "bad.yaml"
    y.write_text(yaml_text)
    out = tmp_path / "run"
    rc, _, err = run_cli(["control", "train", "--config", y, "--output-dir", out], capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(out) is None


def test_argparse_choice_is_exit_2(tmp_path, capsys):
    rc, _, err = run_cli(_train(tmp_path / "run", "--vectorization", "threads"), capsys)
    assert rc == 2 and "invalid choice: 'threads'" in err and "Traceback" not in err
    assert fingerprint(tmp_path / "run") is None


# --------------------------------------------------------------------- Python API, as the CLI
@pytest.mark.parametrize(("make", "fragments"), [
    (lambda: RLConfig(baseline="bogus"), ["'baseline'", "must be one of group_mean, loo, value, batch_mean"]),
    (lambda: RLConfig(algo="vmpp"), ["'algo'", "Did you mean: vmpo"]),
    (lambda: SFTConfig(lr_scheduler="cosinee"), ["'lr_scheduler'", "Did you mean: cosine"]),
    (lambda: RLConfig(weight_level="word"), ["'weight_level'", "sequence, token"]),
    (lambda: ControlConfig(vectorization="threads"), ["'vectorization'", "sync, async"]),
    (lambda: ControlConfig(init_std=-1.0), ["init_std must be > 0"]),
    (lambda: SFTConfig(log_every=0), ["log_every must be >= 1"]),
], ids=["baseline", "algo", "lr_scheduler", "weight_level", "vectorization", "init_std", "log_every"])
def test_python_configs_validate_choices_and_ranges(make, fragments):
    with pytest.raises(ConfigError) as e:
        make().validate()
    for f in fragments:
        assert f in str(e.value)


def test_dict_fields_are_settable_from_the_command_line():
    import argparse

    from emrl.config import add_config_args

    p = argparse.ArgumentParser()
    add_config_args(p, ControlConfig)
    cfg = build_config(ControlConfig, p.parse_args(["--core", "lstm", "--core-kwargs", '{"num_layers": 2}']))
    assert cfg.core_kwargs == {"num_layers": 2} and cfg.core_kwargs_for()["num_layers"] == 2


# -------------------------------------------------------------------------- custom environments
def test_custom_env_class_and_registering_module_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, CUSTOM_ENV, stem="emrl_envs")
    for env_id in (f"{name}:Corridor", f"{name}:EmrlCorridor-v0"):
        out = tmp_path / env_id.replace(":", "_")
        rc, _, err = run_cli(["control", "train", "--env", env_id, "--total-steps", "128", "--num-envs", "2",
                              "--unroll-length", "32", "--epochs", "1", "--eval-episodes", "1",
                              "--output-dir", out], capsys)
        assert rc == 0, err
        assert (out / "final").is_dir()
    # eval of a run naming a module: only with --trust-env-code (the run directory chose it)
    out = tmp_path / f"{name}_Corridor"
    before = fingerprint(out)
    rc, _, err = run_cli(["control", "eval", "--run", out, "--episodes", "1"], capsys)
    assert_clear_error(rc, err, f"names environment '{name}:Corridor'", f"import module '{name}'",
                       "--trust-env-code")
    assert fingerprint(out) == before
    rc, _, err = run_cli(["control", "eval", "--run", out, "--episodes", "1", "--trust-env-code"], capsys)
    assert rc == 0, err


@pytest.mark.parametrize(("source", "env", "fragments"), [
    (CUSTOM_ENV, "Corridr", ["registers no environment 'Corridr'", "Did you mean: Corridor"]),
    ("class Broken(:\n", "Broken", ["has a syntax error"]),
    ("raise ValueError('no display')\n", "X", ["raised ValueError: no display"]),
], ids=["misspelled_class", "syntax_error", "raises_at_import"])
def test_bad_custom_env_module(tmp_path, capsys, monkeypatch, source, env, fragments):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, source, stem="emrl_envs")
    rc, _, err = run_cli(_train(tmp_path / "run", "--env", f"{name}:{env}"), capsys)
    assert_clear_error(rc, err, f"environment '{name}:{env}'", *fragments)
    assert fingerprint(tmp_path / "run") is None


# ------------------------------------------------------------------------ output directories
def test_control_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    rc, _, err = run_cli(_train(tmp_path / "f" / "run"), capsys)
    assert_clear_error(rc, err, "is a file, not a directory")


def test_control_output_dir_not_writable(capsys):
    rc, _, err = run_cli(_train("/sys/emrl-control-run"), capsys)
    assert_clear_error(rc, err, "not writable")


def test_control_existing_run_needs_resume_or_overwrite(run, tmp_path, capsys):
    r = copy_run(run, tmp_path / "run")
    before = fingerprint(r)
    rc, _, err = run_cli(_train(r), capsys)
    assert_clear_error(rc, err, "already holds a run")
    assert fingerprint(r) == before


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--env", "CartPol-v1"], ["unknown environment id"]),
    (["--env", "no_such_env_module_xyz:Foo"], ["cannot import module"]),
    (["--init-std", "-1"], ["init_std must be > 0"]),
    (["--env", "LunarLander-v3", "--core", "nope"], ["core"]),
], ids=["typo_env", "missing_env_module", "init_std", "unknown_core"])
def test_control_overwrite_with_a_bad_flag_keeps_the_old_run(run, tmp_path, capsys, extra, fragments):
    r = copy_run(run, tmp_path / "run")
    before = fingerprint(r)
    rc, _, err = run_cli(_train(r, "--overwrite", *extra), capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(r) == before


# ---------------------------------------------------------------------------------- resume
@pytest.mark.parametrize(("extra", "fragments"), [
    (["--learning-rate", "0.5"], ["started with learning_rate=0.001 but this run has learning_rate=0.5"]),
    (["--total-steps", "512"], ["total_steps=256", "annealing"]),
    (["--env", "Acrobot-v1"], ["env='CartPole-v1'", "Acrobot-v1"]),
    (["--gamma", "0.5"], ["gamma"]),
], ids=["lr", "total_steps_with_annealing", "env", "gamma"])
def test_control_resume_with_changed_settings_is_refused_before_writing(run, tmp_path, capsys, extra, fragments):
    r = copy_run(run, tmp_path / "run")
    shutil.rmtree(r / "final")
    before = fingerprint(r)
    rc, _, err = run_cli(["control", "train", "--output-dir", r, "--resume", *extra], capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(r) == before


def test_control_resume_with_a_partial_config_keeps_the_saved_fields(run, tmp_path, capsys):
    r = copy_run(run, tmp_path / "run")
    shutil.rmtree(r / "final")
    part = tmp_path / "part.yaml"
    part.write_text("eval_episodes: 2\n")
    rc, _, err = run_cli(["control", "train", "--output-dir", r, "--resume", "--config", part], capsys)
    assert rc == 0, err
    saved = yaml.safe_load((r / "config.yaml").read_text())
    assert saved["num_envs"] == 2 and saved["total_steps"] == 256 and saved["eval_episodes"] == 2


def test_control_total_steps_may_grow_without_annealing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(_train(out, "--no-anneal-lr", "--no-anneal-clip"), capsys)[0] == 0
    rc, _, err = run_cli(["control", "train", "--output-dir", out, "--resume", "--total-steps", "384"], capsys)
    assert rc == 0, err
    finals = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "eval/return" in r]
    assert finals == [2, 3]


def test_control_resume_without_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["control", "train", "--output-dir", tmp_path / "empty", "--resume"], capsys)
    assert_clear_error(rc, err, "--resume", "has no config.yaml")
    assert fingerprint(tmp_path / "empty") == {}


def test_control_resume_of_an_old_format_checkpoint_is_refused(run, tmp_path, capsys):
    import torch

    from emrl.checkpoint import load_checkpoint, write_manifest

    r = copy_run(run, tmp_path / "run")
    shutil.rmtree(r / "final")
    ck = r / "checkpoint-2"
    state, meta = load_checkpoint(ck)
    for p in ck.iterdir():
        p.unlink()
    torch.save(state, ck / "state.pt")
    write_manifest(ck, meta)
    before = fingerprint(r)
    rc, _, err = run_cli(["control", "train", "--output-dir", r, "--resume"], capsys)
    assert_clear_error(rc, err, "old format", "--trust-checkpoint")
    assert fingerprint(r) == before


# ------------------------------------------------------------------------------------ eval
def test_control_eval_of_a_directory_without_a_run(tmp_path, capsys):
    rc, _, err = run_cli(["control", "eval", "--run", tmp_path], capsys)
    assert_clear_error(rc, err, "is not a control run directory (no config.yaml)")


def test_control_eval_with_zero_episodes(run, tmp_path, capsys):
    r = copy_run(run, tmp_path / "run")
    before = fingerprint(r)
    rc, _, err = run_cli(["control", "eval", "--run", r, "--episodes", "0"], capsys)
    assert_clear_error(rc, err, "episodes must be >= 1, got 0")
    assert fingerprint(r) == before


def test_control_eval_of_an_old_format_final_is_refused(run, tmp_path, capsys):
    import torch

    from emrl.checkpoint import load_checkpoint, write_manifest

    r = copy_run(run, tmp_path / "run")
    state, meta = load_checkpoint(r / "final")
    for p in (r / "final").iterdir():
        p.unlink()
    torch.save(state, r / "final" / "state.pt")
    write_manifest(r / "final", meta)
    before = fingerprint(r)
    rc, _, err = run_cli(["control", "eval", "--run", r, "--episodes", "1"], capsys)
    assert_clear_error(rc, err, "old format", "--trust-checkpoint")
    assert fingerprint(r) == before
    rc, _, err = run_cli(["control", "eval", "--run", r, "--episodes", "1", "--trust-checkpoint"], capsys)
    assert rc == 0, err


# ------------------------------------------------------------------------------------ --debug
def test_debug_shows_the_traceback_and_the_default_does_not(tmp_path, capsys):
    rc, _, err = run_cli(["--debug", *_train(tmp_path / "run", "--init-std", "-1")], capsys)
    assert rc == 2 and "Traceback (most recent call last)" in err and "error: init_std must be > 0" in err
    rc, _, err = run_cli(_train(tmp_path / "run", "--init-std", "-1"), capsys)
    assert_clear_error(rc, err, "init_std must be > 0")
