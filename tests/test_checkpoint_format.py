"""The data-only checkpoint format: safetensors + JSON, nothing unpickled on load."""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emrl import checkpoint as ckpt
from emrl.errors import CheckpointError
from emrl.seeding import get_rng_state, seed_everything, set_rng_state


class _Payload:
    """Unpickling this creates ``path`` (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def write_legacy_checkpoint(path: Path, obj) -> None:
    """A checkpoint directory in the old format: a pickled state.pt and a valid manifest
    (whoever crafts the directory can rewrite the manifest too)."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path / ckpt.LEGACY_STATE_FILE)
    ckpt.write_manifest(path, {})


def test_nested_state_roundtrips_exactly(tmp_path):
    seed_everything(5)
    w = torch.randn(3, 4)
    state = {
        "tied_a": w, "tied_b": w, "row": w[1], "empty": torch.zeros(0, 2), "flag": torch.tensor(True),
        "rng": get_rng_state(), "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [
            {"lr": 1e-3, "betas": (0.9, 0.99), "foreach": None}]},
        "counters": {"step": 7, "elapsed": 1.25, "nan": float("nan"), "inf": -float("inf")},
        "np": {"f32": np.float32(1.5), "i64": np.int64(-3), "b": np.bool_(True),
               "arr": np.arange(6, dtype=np.uint32).reshape(2, 3), "f64": np.linspace(0, 1, 5)},
        "nested": [(1, "a"), [None, {"k": (2.5,)}]],
        "__emrl_tensor__": "a user key that looks like a marker",
    }
    ckpt.save_checkpoint(tmp_path / "c", state, meta={"step": 7})
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        ckpt.MANIFEST, ckpt.STATE_FILE, ckpt.TENSORS_FILE]
    got, meta = ckpt.load_checkpoint(tmp_path / "c")
    assert meta == {"step": 7}
    assert torch.equal(got["tied_a"], w) and torch.equal(got["tied_b"], w) and torch.equal(got["row"], w[1])
    assert got["empty"].shape == (0, 2) and bool(got["flag"])
    assert got["opt"]["state"][0]["step"].item() == 3.0  # int keys come back as ints
    assert got["opt"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert got["counters"]["step"] == 7 and np.isnan(got["counters"]["nan"])
    assert got["counters"]["inf"] == -float("inf")
    assert type(got["np"]["f32"]) is np.float32 and got["np"]["f32"] == 1.5
    assert type(got["np"]["i64"]) is np.int64 and type(got["np"]["b"]) is np.bool_
    assert got["np"]["arr"].dtype == np.uint32 and got["np"]["arr"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["nested"] == [(1, "a"), [None, {"k": (2.5,)}]]
    assert got["__emrl_tensor__"] == state["__emrl_tensor__"]
    # the RNG states (Python's, NumPy's, torch's) restore exactly
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(got["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws


def test_state_json_is_plain_json(tmp_path):
    ckpt.save_checkpoint(tmp_path / "c", {"x": float("nan"), "t": torch.ones(2)})
    doc = json.loads((tmp_path / "c" / ckpt.STATE_FILE).read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["format"] == ckpt.FORMAT


def test_unstorable_values_are_refused_at_save(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\.fn of type function"):
        ckpt.save_checkpoint(tmp_path / "c", {"fn": lambda: 0})
    with pytest.raises(CheckpointError, match="object"):
        ckpt.save_checkpoint(tmp_path / "c", {"a": np.array([object()])})
    with pytest.raises(CheckpointError, match="bytes"):
        ckpt.save_checkpoint(tmp_path / "c", {"blob": b"pickled"})
    assert not (tmp_path / "c").exists()


def test_old_format_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "marker"
    write_legacy_checkpoint(tmp_path / "old", {"payload": _Payload(str(marker)), "step": 1})
    with pytest.raises(CheckpointError, match="old format.*could run code.*--trust-checkpoint"):
        ckpt.load_checkpoint(tmp_path / "old")
    assert not marker.exists()
    state, _ = ckpt.load_checkpoint(tmp_path / "old", trust_pickle=True)  # the user's explicit choice
    assert state["step"] == 1 and marker.exists()


def test_extra_pickles_in_a_checkpoint_are_never_read(tmp_path):
    marker = tmp_path / "marker"
    path = ckpt.save_checkpoint(tmp_path / "c", {"w": torch.ones(2)})
    for name in (ckpt.LEGACY_STATE_FILE, "optimizer.pt", "rng.pkl"):
        with open(path / name, "wb") as fh:
            pickle.dump(_Payload(str(marker)), fh)
    ckpt.write_manifest(path, {})
    assert torch.equal(ckpt.load_checkpoint(path)[0]["w"], torch.ones(2))
    assert not marker.exists()


@pytest.mark.parametrize("target", [ckpt.STATE_FILE, ckpt.TENSORS_FILE])
def test_a_pickle_in_place_of_a_state_file_is_an_error_not_code(tmp_path, target):
    marker = tmp_path / "marker"
    path = ckpt.save_checkpoint(tmp_path / "c", {"w": torch.ones(2)})
    with open(path / target, "wb") as fh:
        pickle.dump(_Payload(str(marker)), fh)
    ckpt.write_manifest(path, {})
    with pytest.raises(CheckpointError, match="not valid JSON|not a safetensors"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_malformed_state_json_is_a_checkpoint_error(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "c", {"w": torch.ones(2)})
    doc = json.loads((path / ckpt.STATE_FILE).read_text())
    doc["state"]["w"] = {"__emrl_tensor__": "99"}
    (path / ckpt.STATE_FILE).write_text(json.dumps(doc))
    ckpt.write_manifest(path, {})
    with pytest.raises(CheckpointError, match="malformed tensor"):
        ckpt.load_checkpoint(path)
    doc["state"]["w"] = {"__emrl_pickle__": "gASV"}
    (path / ckpt.STATE_FILE).write_text(json.dumps(doc))
    ckpt.write_manifest(path, {})
    with pytest.raises(CheckpointError, match="unknown entry '__emrl_pickle__'"):
        ckpt.load_checkpoint(path)


def test_env_snapshot_is_plain_data_and_resumes_pendulum_bit_identically(tmp_path):
    from emrl.control.config import ControlConfig
    from emrl.control.train import train
    from emrl.metrics import read_metrics

    cfg = ControlConfig(env="Pendulum-v1", total_steps=1024, num_envs=2, unroll_length=64, epochs=2,
                        eval_every=0, eval_episodes=1, save_every=512, keep_checkpoints=5,
                        normalize_obs=True)
    train(cfg, tmp_path / "whole")
    state, _ = ckpt.load_checkpoint(tmp_path / "whole" / "checkpoint-4")
    snap = state["actor"]["envs"]
    assert isinstance(snap, list) and len(snap) == 2
    layers = [d["class"] for d in snap[0]]
    assert layers[-1] == "PendulumEnv" and "TimeLimit" in layers
    time_limit = snap[0][layers.index("TimeLimit")]["attrs"]
    assert time_limit["_elapsed_steps"] == 256 % 200  # mid-episode clock kept
    assert snap[0][-1]["np_random"]["bit_generator"] == "PCG64"
    out = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", out)
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    train(cfg, out, resume=True)
    a, _ = ckpt.load_checkpoint(tmp_path / "whole" / "checkpoint-8")
    b, _ = ckpt.load_checkpoint(out / "checkpoint-8")
    for k, v in a["agent"].items():
        assert torch.equal(v, b["agent"][k]), k

    def rows(d):
        return [(r["step"], r.get("reward/mean"), r.get("eval/return")) for r in read_metrics(d / "metrics.jsonl")]

    assert rows(out) == rows(tmp_path / "whole")
