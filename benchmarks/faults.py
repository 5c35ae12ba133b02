"""Fault benchmark: SIGKILL runs at random moments, resume until done, compare.

For each kind of run (LM SFT, LM V-MPO, control PPO on CartPole; optionally LM SFT under
``accelerate launch`` with 2 CPU processes) it runs the command once uninterrupted, then
again with ``--kills`` SIGKILLs delivered while it runs, each followed by ``--resume``
until the run completes. A kill lands mid-run (after a random number of further logged
updates), during or just after a checkpoint write (``.checkpoint-N.*.tmp``), or during the
final evaluation / the ``final/`` write. The interrupted run is identical when its final
weights (every tensor of ``final/``) and its metrics records (timings aside) equal the
uninterrupted run's.

::

    python benchmarks/faults.py                      # 2 kills per kind (a quick check)
    python benchmarks/faults.py --kills 8 --multi    # the recorded run (benchmarks/results/faults.md)

Prints one line per kind (kills survived by trigger, starts, identical yes/no) and a total.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMING_KEYS = ("time/", "throughput/")


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return dict(os.environ, EMRL_PROGRESS="0", OMP_NUM_THREADS="1", EMRL_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                GLOO_SOCKET_IFNAME="lo", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(multi: bool) -> list[str]:
    if not multi:
        return [sys.executable, "-m", "emrl.cli"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_free_port()), "-m", "emrl.cli"]


def kinds(work: Path) -> dict[str, dict]:
    lm_common = ["--task", "reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=1",
                 "--num-train", "64", "--num-eval", "8", "--batch-size", "8", "--eval-num-prompts", "4",
                 "--eval-samples", "2", "--max-new-tokens", "4", "--num-threads", "1", "--save-every", "1",
                 "--keep-checkpoints", "2"]
    sft = ["lm", "sft", "--model", "tiny", "--max-steps", "8", "--warmup-steps", "2", *lm_common]
    base_model = work / "lm-sft-reference" / "final"
    return {
        "lm-sft": {"args": sft, "multi": False, "final_checkpoint": "checkpoint-8", "records": 8},
        "lm-vmpo": {"args": ["lm", "train", "--algo", "vmpo", "--model", str(base_model), "--max-steps", "5",
                             "--num-samples", "4", "--eval-every", "2", *lm_common], "multi": False,
                    "final_checkpoint": "checkpoint-5", "records": 5},
        "control-ppo": {"args": ["control", "train", "--env", "CartPole-v1", "--total-steps", "4096",
                                 "--num-envs", "4", "--unroll-length", "64", "--epochs", "4",
                                 "--normalize-obs", "--eval-every", "1024", "--eval-episodes", "2",
                                 "--save-every", "256", "--keep-checkpoints", "2"], "multi": False,
                        "final_checkpoint": "checkpoint-16", "records": 17},
        "lm-sft-2proc": {"args": ["lm", "sft", "--model", "tiny", "--max-steps", "6", *lm_common], "multi": True,
                         "final_checkpoint": "checkpoint-6", "records": 6},
    }


def _start(kind: dict, out: Path, resume: bool) -> subprocess.Popen:
    """Start the run; after a kill: ``--resume`` from its checkpoint, or ``--overwrite``
    when it was killed before its first checkpoint (as emrl's error message says)."""
    cmd = [*_launcher(kind["multi"]), *kind["args"], "--output-dir", str(out)]
    if resume:
        from emrl.checkpoint import latest_checkpoint

        cmd.append("--resume" if latest_checkpoint(out) is not None else "--overwrite")
    log = open(out.parent / f"{out.name}.log", "a")  # noqa: SIM115 - closed with the process
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=log, start_new_session=True)
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def _tail(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()[-3000:]  # type: ignore[attr-defined]


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every worker
    except ProcessLookupError:
        pass
    proc.wait()


def _has_run(out: Path) -> bool:
    return (out / "config.yaml").exists() or any(out.glob("checkpoint-*"))


def run_once(kind: dict, out: Path, timeout: float) -> float:
    t0 = time.time()
    proc = _start(kind, out, resume=False)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise SystemExit(f"uninterrupted run {out} took longer than {timeout} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"uninterrupted run {out} failed:\n{_tail(proc)}")
    return time.time() - t0


def _records_so_far(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_bytes().splitlines() if line.strip())
    except OSError:
        return 0


def run_with_kills(kind: dict, out: Path, kills: int, rng: random.Random, timeout: float) -> dict:
    """Deliver ``kills`` SIGKILLs, resuming after each, then let the run finish.

    Each kill has a trigger, polled every few milliseconds: ``update`` (once a random
    number of further metrics records are logged: mid-run, often between an update and
    its checkpoint), ``checkpoint`` (as soon as a checkpoint write is seen — its
    ``.checkpoint-N.*.tmp`` — or just after one lands) and ``final`` (during the final
    evaluation or the ``final/`` write, which follow the final checkpoint). A start that
    completes before its trigger (the machine was faster than the poll) is not a kill:
    the run is then started again from scratch (``--overwrite``) and the counts reset, so
    every counted kill is in the history of the run that is compared.
    """
    modes = ["update", "checkpoint", "final"]
    counts = {"during a checkpoint write": 0, "just after a checkpoint": 0, "mid-run": 0,
              "during the final evaluation / final/ write": 0}
    starts, restarts = 0, 0
    t_end = time.time() + timeout
    final_ck = out / kind["final_checkpoint"]
    while True:
        left = kills - sum(counts.values())
        proc = _start(kind, out, resume=_has_run(out))
        starts += 1
        if left <= 0:
            proc.wait(timeout=max(1.0, t_end - time.time()))
            if proc.returncode != 0:
                raise SystemExit(f"{out}: the final resume failed:\n{_tail(proc)}")
            return {**counts, "starts": starts, "restarts": restarts}
        mode = rng.choice(modes)
        from emrl.checkpoint import checkpoint_step, latest_checkpoint

        ck = latest_checkpoint(out) if out.exists() else None
        now = checkpoint_step(ck) if ck is not None else 0  # ~ records kept by the resume
        if final_ck.exists() or (mode == "update" and now >= kind["records"] - 2):
            mode = "final"  # only the final evaluation / final/ write is left to interrupt
        target = min(now + rng.randint(1, max(1, kind["records"] // 2)), kind["records"] - 1)
        cks = {p.name for p in out.glob("checkpoint-*")}
        hit = None
        while proc.poll() is None and time.time() < t_end:
            if out.exists() and not (out / "final").exists():
                if mode == "update" and _records_so_far(out) >= target and not final_ck.exists():
                    hit = "mid-run"
                elif mode == "checkpoint" and any(out.glob(".checkpoint-*.tmp")):
                    hit = "during a checkpoint write"
                elif mode == "checkpoint" and {p.name for p in out.glob("checkpoint-*")} - cks:
                    hit = "just after a checkpoint"
                elif mode == "final" and (final_ck.exists() or any(out.glob(".final.*.tmp"))):
                    hit = "during the final evaluation / final/ write"
            if hit:
                _kill(proc)
                counts[hit] += 1
                break
            time.sleep(0.003)
        if hit:
            continue
        if proc.poll() is None:
            _kill(proc)
            raise SystemExit(f"{out}: timed out")
        if proc.returncode != 0:
            raise SystemExit(f"{out}: a resume failed:\n{_tail(proc)}")
        # completed before the trigger: start over so every counted kill is in one history
        shutil.rmtree(out)
        counts = dict.fromkeys(counts, 0)
        restarts += 1


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    out = {}
    for f in files:
        out.update({f"{f.name}:{k}": v for k, v in load_file(str(f)).items()})
    return out


def _records(path: Path) -> list[dict]:
    recs = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            recs.append({k: v for k, v in r.items() if k != "wall_time" and not k.startswith(TIMING_KEYS)})
    return recs


def identical(a: Path, b: Path) -> tuple[bool, str]:
    import torch

    ta, tb = _tensors(a / "final"), _tensors(b / "final")
    if ta.keys() != tb.keys():
        return False, "final/ holds other tensors"
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    if diff:
        return False, f"{len(diff)} of {len(ta)} final tensors differ (e.g. {diff[0]})"
    ra, rb = _records(a / "metrics.jsonl"), _records(b / "metrics.jsonl")
    if ra != rb:
        steps_a, steps_b = [r["step"] for r in ra], [r["step"] for r in rb]
        if steps_a != steps_b:
            return False, f"metrics steps differ: {steps_a} vs {steps_b}"
        first = next(i for i, (x, y) in enumerate(zip(ra, rb, strict=True)) if x != y)
        keys = [k for k in ra[first] if ra[first].get(k) != rb[first].get(k)]
        return False, f"metrics record {first} (step {ra[first]['step']}) differs in {keys[:4]}"
    return True, f"{len(ta)} final tensors and {len(ra)} metrics records equal"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs per single-process kind (default: 2)")
    p.add_argument("--multi", action="store_true",
                   help="also run LM SFT under accelerate launch with 2 CPU processes")
    p.add_argument("--multi-kills", type=int, default=2, help="SIGKILLs for the 2-process run (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    p.add_argument("--only", nargs="*", default=None, help="kinds to run (default: all)")
    p.add_argument("--work-dir", default=None, help="where to write the runs (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per run (default: 900)")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="emrl-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    all_kinds = kinds(work)
    names = [n for n in all_kinds if (args.multi or not all_kinds[n]["multi"])]
    if args.only:
        names = [n for n in names if n in args.only]
        if "lm-vmpo" in names and "lm-sft" not in names:
            names.insert(0, "lm-sft")  # its reference model is the V-MPO run's start
    print(f"work dir: {work}; kills per kind: {args.kills} (2-process: {args.multi_kills}); seed {args.seed}",
          flush=True)
    total_kills, total_ok, rows = 0, True, []
    for name in names:
        kind = all_kinds[name]
        ref = work / f"{name}-reference"
        wall = run_once(kind, ref, args.timeout)
        k = args.multi_kills if kind["multi"] else args.kills
        counts = run_with_kills(kind, work / f"{name}-killed", k, rng, args.timeout)
        same, why = identical(ref, work / f"{name}-killed")
        n = sum(v for key, v in counts.items() if key not in ("starts", "restarts"))
        total_kills += n if not kind["multi"] else 0
        total_ok &= same or kind["multi"]
        how = ", ".join(f"{v} {key}" for key, v in counts.items() if key not in ("starts", "restarts") and v)
        restarts = f", {counts['restarts']} restarts from scratch" if counts["restarts"] else ""
        line = (f"{name}: {n} kills survived ({how or 'none'}), {counts['starts']} starts{restarts}; "
                f"identical: {'yes' if same else 'no'} ({why}); uninterrupted run {wall:.0f} s")
        rows.append(line)
        print(line, flush=True)
    print(f"single-process: {total_kills} kills survived; identical: {'yes' if total_ok else 'no'}")
    return 0 if total_ok else 1


if __name__ == "__main__":
    sys.exit(main())
