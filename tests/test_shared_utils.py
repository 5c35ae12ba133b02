"""Shared utilities: configs, atomic checkpoints, metrics, run directories, CLI errors."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from emrl import checkpoint as ckpt
from emrl.cli import main as cli_main
from emrl.config import add_config_args, build_config, cfg_field, load_config, save_config
from emrl.errors import CheckpointError, ConfigError, EmrlError, close_matches
from emrl.metrics import MetricsWriter, read_metrics
from emrl.rundir import RunDir
from emrl.seeding import get_rng_state, seed_everything, set_rng_state


@dataclass
class _Cfg:
    lr: float = cfg_field(1e-3, "learning rate")
    steps: int = cfg_field(10, "number of steps")
    name: str = cfg_field("tiny", "model")
    flag: bool = cfg_field(False, "a switch")
    rho: float | None = cfg_field(None, "optional fraction")
    layers: list[int] = cfg_field([1, 2], "sizes")


def _parse(argv, tmp_path=None):
    p = argparse.ArgumentParser()
    add_config_args(p, _Cfg)
    return p.parse_args(argv)


def test_config_priority_defaults_yaml_cli(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("lr: 0.5\nsteps: 3\nlayers: [4, 5]\n")
    cfg = build_config(_Cfg, _parse(["--config", str(y), "--steps", "7", "--flag"]))
    assert cfg.lr == 0.5  # from YAML
    assert cfg.steps == 7  # CLI beats YAML
    assert cfg.flag is True
    assert cfg.layers == [4, 5]
    assert cfg.name == "tiny"  # default
    cfg2 = build_config(_Cfg, _parse(["--layers", "3,4", "--rho", "none"]))
    assert cfg2.layers == [3, 4] and cfg2.rho is None


def test_config_roundtrip(tmp_path: Path) -> None:
    cfg = build_config(_Cfg, _parse(["--rho", "0.25"]))
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(_Cfg, tmp_path / "config.yaml") == cfg


def test_config_errors(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown field 'stepz'.*steps"):
        build_config(_Cfg, _parse(["--config", str(y)]))
    with pytest.raises(ConfigError, match="'steps' expects int"):
        build_config(_Cfg, _parse(["--steps", "abc"]))
    with pytest.raises(ConfigError, match="not found"):
        build_config(_Cfg, _parse(["--config", str(tmp_path / "missing.yaml")]))
    y.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(_Cfg, _parse(["--config", str(y)]))


def test_checkpoint_roundtrip_and_corruption(tmp_path: Path) -> None:
    state = {"w": torch.arange(5.0), "step": 3}
    path = ckpt.save_checkpoint(tmp_path / "checkpoint-3", state, meta={"env": "CartPole-v1"})
    loaded, meta = ckpt.load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3
    assert meta == {"env": "CartPole-v1"}
    assert ckpt.latest_checkpoint(tmp_path) == path
    # flip one byte: the manifest catches it
    data = bytearray((path / ckpt.STATE_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / ckpt.STATE_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.load_checkpoint(path)


def test_checkpoint_interrupted_write_leaves_nothing_valid(tmp_path: Path) -> None:
    old = ckpt.save_checkpoint(tmp_path / "checkpoint-1", {"v": 1})

    def boom(tmp: Path) -> None:
        (tmp / "partial.bin").write_bytes(b"x" * 10)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(tmp_path / "checkpoint-2", {"v": 2}, write_extra=boom)
    assert not (tmp_path / "checkpoint-2").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-1"]  # no temp dirs left
    assert ckpt.latest_checkpoint(tmp_path) == old
    # a directory without manifest (e.g. copied by hand, half written) is not a checkpoint
    (tmp_path / "checkpoint-9").mkdir()
    assert ckpt.latest_checkpoint(tmp_path) == old
    with pytest.raises(CheckpointError, match="not a complete"):
        ckpt.load_checkpoint(tmp_path / "checkpoint-9")


def test_overwrite_replaces_atomically(tmp_path: Path) -> None:
    p = ckpt.save_checkpoint(tmp_path / "final", {"v": 1})
    ckpt.save_checkpoint(p, {"v": 2})
    assert ckpt.load_checkpoint(p)[0]["v"] == 2
    ckpt.prune_checkpoints(tmp_path, keep=1)


def test_metrics_writer_and_truncate(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as w:
        for s in range(1, 5):
            w.log({"loss/policy": torch.tensor(0.5 * s)}, step=s, nan=float("nan"))
    recs = read_metrics(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert recs[1]["loss/policy"] == 1.0 and recs[0]["nan"] is None
    assert all("wall_time" in r for r in recs)
    with pytest.raises(ValueError, match="step"):
        MetricsWriter(path).log({"x": 1})
    MetricsWriter(path, truncate_after_step=2).close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_rundir_refuses_to_clobber(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    rd.write_config(_Cfg())
    with pytest.raises(EmrlError, match="already holds a run"):
        RunDir(tmp_path / "run")
    with pytest.raises(EmrlError, match="no run to resume"):
        RunDir(tmp_path / "other", resume=True)
    assert RunDir(tmp_path / "run", resume=True).config_path.exists()
    RunDir(tmp_path / "run", overwrite=True)
    assert not (tmp_path / "run" / "config.yaml").exists()
    rd2 = RunDir(tmp_path / "run2")
    rd2.write_eval({"accuracy": 0.5})
    assert json.loads(rd2.eval_path.read_text()) == {"accuracy": 0.5}


def test_rng_state_roundtrip() -> None:
    seed_everything(3)
    st = get_rng_state()
    a = torch.rand(3)
    set_rng_state(st)
    assert torch.equal(torch.rand(3), a)


def test_close_matches() -> None:
    assert close_matches("CartPol-v1", ["CartPole-v1", "Pendulum-v1"])[0] == "CartPole-v1"


def test_cli_help_and_version(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert "emrl" in capsys.readouterr().out
    assert cli_main([]) == 2


def test_atomic_write_leaves_no_temp(tmp_path: Path) -> None:
    ckpt.atomic_write_json(tmp_path / "a.json", {"x": 1})
    ckpt.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert os.listdir(tmp_path) == ["a.json"]
