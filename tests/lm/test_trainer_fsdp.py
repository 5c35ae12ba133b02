"""Issue 14 part 5: the trainer with an FSDP2-sharded policy, 2 CPU processes over gloo.

Each process holds half of every sharded weight; the E-step over the global batch equals
one process's; generation, evaluation, checkpoints, final/ and --resume work with the
shards (see ``dist_fsdp_worker.py`` for how the policy is sharded on CPUs)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_trainer_distributed import _env, _free_port
from trainer_helpers import write_task

from emrl.metrics import read_metrics

WORKER = Path(__file__).with_name("dist_fsdp_worker.py")
TIMING = ("wall_time", "time/", "throughput/")


def _launch(args, nproc=2):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    proc = subprocess.run(launch + [str(WORKER), *map(str, args)], env=_env(), timeout=400,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the 2-process test runs on CPU (gloo)")
def test_fsdp2_sharded_trainer_matches_one_process_and_resumes(tmp_path):
    pytest.importorskip("torch.distributed.fsdp").FSDPModule  # noqa: B018 - FSDP2 present
    task = write_task(tmp_path)
    one, two, cut_out = tmp_path / "one.json", tmp_path / "two.json", tmp_path / "cut.json"
    proc = subprocess.run([sys.executable, str(WORKER), str(task), str(one), str(tmp_path / "run1"), "0"],
                          env=_env(), timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _launch([task, two, tmp_path / "run", 2])
    r1, r2 = json.loads(one.read_text()), json.loads(two.read_text())
    assert r2["train"]["sharded"] and r2["train"]["world"] == 2
    assert r2["train"]["local_fraction"] < 0.6  # each process holds about half of the weights
    for name in ("vmpo", "awr", "dar"):
        assert r2[name]["world"] == 2 and r1[name]["world"] == 1
        assert r2[name]["values"] == pytest.approx(r1[name]["values"], abs=1e-5), name
        for k, v in r1[name]["metrics"].items():
            assert r2[name]["metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), (name, k)
    run = tmp_path / "run"
    assert r2["train"]["step"] == 2 and r2["train"]["eval/accuracy"] is not None
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "final") is not None  # full weights saved
    # resume from checkpoint-1 of the sharded run: the same metrics as the uninterrupted run
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    for d in ("checkpoint-2", "final"):
        shutil.rmtree(cut / d)
    (cut / "eval.json").unlink()
    # keep the records up to checkpoint-1 (step 0 is the start model's evaluation)
    (cut / "metrics.jsonl").write_text("\n".join((cut / "metrics.jsonl").read_text().splitlines()[:2]) + "\n")
    _launch([task, cut_out, cut, 2, "--resume"])
    strip = lambda recs: [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in recs]  # noqa: E731
    a, b = strip(read_metrics(run / "metrics.jsonl")), strip(read_metrics(cut / "metrics.jsonl"))
    assert [r["step"] for r in b] == [0, 1, 2]
    for ra, rb in zip(a, b, strict=True):
        for k, v in ra.items():
            assert rb[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
