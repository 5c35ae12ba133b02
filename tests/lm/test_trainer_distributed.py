"""Issue 4 part 7: under ``accelerate launch`` with 2 CPU processes (gloo) the E-step
(top-k, temperature dual, normalisation, group baselines) is computed over the global
batch, so it matches one process holding the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_helpers import write_task

WORKER = Path(__file__).with_name("dist_estep_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, EMRL_PROGRESS="0", OMP_NUM_THREADS="1", EMRL_NUM_THREADS="1",
               GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the 2-process test runs on CPU (gloo)")
def test_two_process_estep_matches_one_process(tmp_path):
    task = write_task(tmp_path)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(WORKER), str(task), str(one)], check=True, env=_env(),
                   timeout=300, capture_output=True)
    # `--multi_gpu` selects accelerate's torch.distributed launcher (2 processes); on a machine
    # without CUDA the trainer's Accelerator(cpu=True) then runs them as MULTI_CPU over gloo.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    proc = subprocess.run(launch + [str(WORKER), str(task), str(two), str(tmp_path / "run")], env=_env(),
                          timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    for name, res in r1.items():
        assert res["world"] == 1 and r2[name]["world"] == 2
        assert r2[name]["values"] == pytest.approx(res["values"], abs=1e-5), name
        for k, v in res["metrics"].items():
            assert r2[name]["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
    # V-MPO's top-k is global: the selected count is max(1, floor(rho N)) of the whole batch
    assert sum(w > 0 for w in r2["vmpo"]["values"]) == int(0.3 * 32)
    # a full DDP run: two updates, checkpoints and final/ written by the main process
    assert r2["train"] == {"step": 2, "world": 2}
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert (tmp_path / "run" / "checkpoint-2" / "manifest.json").is_file()
