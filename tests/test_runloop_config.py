"""Shared chores: config aliases (old field names) and choices, the run-loop cadences,
checkpoint writing and the resume checks (emrl.config, emrl.runloop)."""

import argparse
import warnings
from dataclasses import dataclass

import pytest

from emrl import config as C
from emrl.config import add_config_args, build_config, cfg_field, from_dict, with_aliases
from emrl.errors import CheckpointError, ConfigError
from emrl.rundir import RunDir
from emrl.runloop import (
    Cadence,
    check_resume,
    load_resume_checkpoint,
    resume_config_values,
    write_checkpoint,
)


@with_aliases
@dataclass
class _Cfg:
    learning_rate: float = cfg_field(1e-3, "lr", aliases=("lr",))
    sched: str = cfg_field("cosine", "schedule", choices=["constant", "cosine"])
    every: int = cfg_field(10, "how often")


@pytest.fixture(autouse=True)
def _fresh_warnings():
    C._WARNED_ALIASES.clear()
    yield
    C._WARNED_ALIASES.clear()


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_args(p, _Cfg)
    return p.parse_args(argv)


def test_old_name_works_everywhere_and_warns_once(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\n")
    with pytest.warns(FutureWarning, match="'lr'.*deprecated name of 'learning_rate'") as rec:
        assert build_config(_Cfg, _parse(["--config", str(y)])).learning_rate == 0.5
        assert build_config(_Cfg, _parse(["--lr", "0.25"])).learning_rate == 0.25
        assert from_dict(_Cfg, {"lr": 0.125}).learning_rate == 0.125
        assert _Cfg(lr=0.0625).learning_rate == 0.0625
        cfg = _Cfg()
        cfg.lr = 0.2
        assert cfg.learning_rate == 0.2 and cfg.lr == 0.2
    assert len([w for w in rec if issubclass(w.category, FutureWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name never warns
        assert build_config(_Cfg, _parse(["--learning-rate", "0.3"])).learning_rate == 0.3


def test_both_names_is_an_error():
    with pytest.raises(ConfigError, match="both 'lr'.*'learning_rate'"):
        from_dict(_Cfg, {"lr": 1.0, "learning_rate": 2.0})
    with pytest.raises(ConfigError, match="both"):
        _Cfg(lr=1.0, learning_rate=2.0)


def test_choices_checked_for_yaml_cli_and_python(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("sched: cosinee\n")
    with pytest.raises(ConfigError, match="must be one of constant, cosine; got 'cosinee'. Did you mean: cosine"):
        build_config(_Cfg, _parse(["--config", str(y)]))
    with pytest.raises(ConfigError, match="got 'linear'"):
        build_config(_Cfg, None, sched="linear")
    with pytest.raises(SystemExit):
        _parse(["--sched", "cosinee"])


def test_cadence_every_update_and_every_env_step_batch():
    c = Cadence(3)
    assert [s for s in range(1, 11) if c(s)] == [3, 6, 9]
    c = Cadence(1000)
    assert [s for s in range(256, 5000, 256) if c(s)] == [1024, 2048, 3072, 4096]
    assert not any(Cadence(0)(s) for s in range(1, 100))
    assert Cadence(1000, count0=2048).next == 3000  # resumed
    with pytest.raises(ValueError, match=">= 0"):
        Cadence(-1)


def test_write_checkpoint_prunes_and_resume_checks(tmp_path):
    run = RunDir(tmp_path / "run")
    for step in (1, 2, 3):
        write_checkpoint(run, step, {"x": step}, meta={"env": "E"}, keep=2)
    assert sorted(p.name for p in run.path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    path, state, meta = load_resume_checkpoint(run, {"env": "E"})
    assert path.name == "checkpoint-3" and state == {"x": 3} and meta["step"] == 3
    with pytest.raises(CheckpointError, match="trained with env='E', but this run has env='F'"):
        load_resume_checkpoint(run, {"env": "F"})
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_resume_checkpoint(RunDir(tmp_path / "empty"), {})


def test_check_resume_one_strictness_and_old_names():
    kw = dict(free=("every",), where="the run", horizon="steps", horizon_ok=False, horizon_why="the schedule")
    check_resume(_Cfg(every=5), {"lr": 1e-3, "sched": "cosine", "every": 10}, **kw)  # old name, free field
    with pytest.raises(CheckpointError, match="learning_rate=0.001 but this run has learning_rate=0.01"):
        check_resume(_Cfg(learning_rate=1e-2), {"learning_rate": 1e-3, "sched": "cosine", "every": 10}, **kw)


def test_resume_config_values(tmp_path):
    (tmp_path / "config.yaml").write_text("lr: 0.5\nevery: 3\n")
    assert resume_config_values(tmp_path, {"every": 4}, _Cfg) == {"learning_rate": 0.5, "every": 4}
    with pytest.raises(CheckpointError, match="no config.yaml"):
        resume_config_values(tmp_path / "nope", {}, _Cfg)
