"""Issue 3 parts 6-7 and issue 4 "Bad input": run directories, checkpoints and resume,
non-finite handling, reward errors, and the `emrl lm sft` / `emrl lm train` commands."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from trainer_helpers import digit_fraction, make_trainer, rl_config, sft_config, write_task

from emrl.checkpoint import load_checkpoint
from emrl.errors import CheckpointError, ConfigError, EmrlError
from emrl.lm.algorithms import VMPO
from emrl.metrics import read_metrics

TIMING = ("wall_time", "time/", "throughput/")


def _strip(recs):
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in recs]


def test_run_directory_and_final_loads_with_plain_transformers(tmp_path):
    tr = make_trainer(sft_config(max_steps=3, save_every=2), tmp_path)
    tr.train()
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file()
    recs = read_metrics(run / "metrics.jsonl")
    # step 0: the start model's held-out evaluation, so the curve starts where training did
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["samples"] == 0 and "eval/accuracy" in recs[0] and "loss/policy" not in recs[0]
    for key in ("samples", "wall_time", "loss/policy", "time/update_s", "throughput/tokens_per_s"):
        assert key in recs[1]
    assert "eval/accuracy" in recs[-1]
    assert json.loads((run / "eval.json").read_text())["accuracy"] == recs[-1]["eval/accuracy"]
    load_checkpoint(run / "checkpoint-2")
    load_checkpoint(run / "checkpoint-3")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emrl.lm.tasks import load_task_info

    m = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    assert sum(p.numel() for p in m.parameters()) > 0 and tok.eos_token is not None
    assert load_task_info(run / "final")["spec"].endswith("task.jsonl")
    for a, b in zip(m.state_dict().values(), tr.lm.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("algo", ["sft", "vmpo"])
def test_resume_reproduces_uninterrupted_run(tmp_path, algo):
    cfg = sft_config(max_steps=6, save_every=3, keep_checkpoints=0) if algo == "sft" else \
        rl_config(algo="vmpo", max_steps=6, save_every=3, keep_checkpoints=0, eval_every=2)
    make_trainer(cfg, tmp_path, out="full").train()
    full = tmp_path / "full"
    # simulate a crash after step 4: keep checkpoint-3 and the metrics logged so far
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoint-6")
    shutil.rmtree(cut / "final")
    (cut / "eval.json").unlink()
    lines = (cut / "metrics.jsonl").read_text().splitlines()[:4]
    (cut / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    make_trainer(cfg, tmp_path, out="cut", resume=True).train()
    a, b = read_metrics(full / "metrics.jsonl"), read_metrics(cut / "metrics.jsonl")
    assert [r["step"] for r in b] == [r["step"] for r in a]
    assert _strip(a) == _strip(b)
    sa, _ = load_checkpoint(full / "checkpoint-6")
    sb, _ = load_checkpoint(cut / "checkpoint-6")
    for k, v in sa["policy"].items():
        assert torch.equal(v, sb["policy"][k]), k


def test_resume_rejects_corrupted_checkpoint(tmp_path):
    make_trainer(sft_config(max_steps=2), tmp_path).train()
    state = tmp_path / "run" / "checkpoint-2" / "tensors.safetensors"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        make_trainer(sft_config(max_steps=4), tmp_path, resume=True)


def test_resume_rejects_mismatched_checkpoint(tmp_path):
    make_trainer(sft_config(max_steps=2), tmp_path).train()
    with pytest.raises(CheckpointError, match="learning_rate"):
        make_trainer(sft_config(max_steps=4, learning_rate=0.5), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="algo"):
        make_trainer(rl_config(algo="vmpo", max_steps=4), tmp_path, resume=True)


def test_resume_without_checkpoint_is_an_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        make_trainer(sft_config(), tmp_path, resume=True)


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    make_trainer(sft_config(max_steps=1), tmp_path).train()
    with pytest.raises(EmrlError, match="--resume"):
        make_trainer(sft_config(max_steps=1), tmp_path)
    make_trainer(sft_config(max_steps=1), tmp_path, overwrite=True).train()


def test_reward_function_raising_names_it_and_keeps_checkpoint(tmp_path):
    down = {"now": False}

    def flaky_reward(prompts, completions, **_):
        if down["now"]:
            raise RuntimeError("reward server down")
        return digit_fraction(prompts, completions)

    def after(step, rec):  # the server goes down after the second update
        down["now"] = step >= 2

    tr = make_trainer(rl_config(algo="vmpo", max_steps=5, save_every=2), tmp_path, reward=flaky_reward)
    with pytest.raises(EmrlError, match="flaky_reward.*reward server down"):
        tr.train(callback=after)
    state, meta = load_checkpoint(tmp_path / "run" / "checkpoint-2")
    assert meta["step"] == 2
    assert not (tmp_path / "run" / "final").exists()


def test_reward_function_non_finite_is_named(tmp_path):
    def nan_reward(prompts, completions, **_):
        return [math.nan if i == 3 else 0.0 for i in range(len(completions))]

    tr = make_trainer(rl_config(algo="awr", max_steps=2), tmp_path, reward=nan_reward)
    with pytest.raises(EmrlError, match="nan_reward.*non-finite.*index 3"):
        tr.train()


def test_identical_rewards_in_a_group_give_uniform_weights(tmp_path):
    for algo in ("awr", "dar", "vmpo"):
        tr = make_trainer(rl_config(algo=algo, top_fraction=1.0, normalize_advantages=True), tmp_path, out=None)
        rows = tr.task.train[:4]
        b = tr.encode([r["prompt"] for r in rows for _ in range(4)], [f"{i}x" for i in range(16)],
                      [r for r in rows for _ in range(4)])
        b["rewards"] = torch.tensor([1.0] * 4 + [0.0, 1.0, 0.0, 1.0] * 3)  # group 0: all equal
        if algo == "dar":
            tr.algo.finish_batch(tr.ctx, b)
            b["ref_logp"] = b["old_logp"].clone()  # π_ref = π_t: weights depend on A only
        tr.algo.estep(tr.ctx, b)
        w = b["weights"]
        assert bool(torch.isfinite(w).all()), algo
        assert torch.allclose(w[:4], w[0].expand(4)), (algo, w[:4])


def test_group_baseline_with_one_sample_is_explained():
    with pytest.raises(ConfigError, match="num_samples >= 2"):
        rl_config(algo="vmpo", num_samples=1, baseline="group_mean").validate()
    rl_config(algo="vmpo", num_samples=1, baseline="batch_mean").validate()


class _NaNLoss(VMPO):
    """V-MPO whose M-step loss is NaN on chosen calls (to exercise the trainer's guard)."""

    def __init__(self, cfg, bad):
        super().__init__(cfg)
        self.bad, self.calls = bad, 0

    def loss(self, trainer, mb, out):
        loss, m = super().loss(trainer, mb, out)
        self.calls += 1
        if self.calls in self.bad or -1 in self.bad:
            loss = loss * float("nan")
        return loss, m


def test_nonfinite_mstep_loss_is_skipped_and_logged(tmp_path):
    cfg = rl_config(algo="vmpo", max_steps=3, epochs=2, kl_early_stop=False)
    tr = make_trainer(cfg, tmp_path, algorithm=_NaNLoss(cfg, bad={2}))
    before = {k: v.clone() for k, v in tr.lm.state_dict().items()}
    tr.train()
    recs = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["step"] > 0]
    assert [r["mstep/nonfinite_skipped"] for r in recs] == [1.0, 0.0, 0.0]
    assert all(torch.isfinite(v).all() for v in tr.lm.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in tr.lm.state_dict().items())


def test_nonfinite_losses_in_a_row_stop_the_run(tmp_path):
    cfg = rl_config(algo="vmpo", max_steps=5, epochs=2, max_nonfinite_steps=3, save_every=1,
                    kl_early_stop=False)
    tr = make_trainer(cfg, tmp_path, algorithm=_NaNLoss(cfg, bad={3, 4, 5, 6, 7, 8}))
    with pytest.raises(EmrlError, match="3 M-step gradient steps in a row"):
        tr.train()
    run = tmp_path / "run"
    state, meta = load_checkpoint(run / "checkpoint-1")
    assert all(torch.isfinite(v).all() for v in state["policy"].values())
    assert not (run / "final").exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    tr = make_trainer(sft_config(max_steps=1), tmp_path)
    with torch.no_grad():
        next(tr.lm.parameters()).fill_(float("nan"))
    with pytest.raises(EmrlError, match="non-finite"):
        tr.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoint-0").exists()


def test_unknown_algorithm_suggests_close_match():
    from emrl.lm.algorithms import make_algorithm

    with pytest.raises(EmrlError, match="vmpo"):
        make_algorithm("vmp", rl_config())


def test_cli_sft_then_train_with_resume(tmp_path, capsys):
    import argparse

    import yaml

    from emrl.lm.train_cli import register_sft, register_train

    task = write_task(tmp_path)

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    register_sft(sub)
    register_train(sub)
    small = tmp_path / "small.yaml"
    small.write_text("num_threads: 1\nbatch_size: 8\neval_num_prompts: 4\neval_samples: 0\nmax_new_tokens: 4\n")
    sft = tmp_path / "sft"
    args = parser.parse_args(["sft", "--model", "tiny", "--task", str(task), "--output-dir", str(sft),
                              "--max-steps", "2", "--config", str(small), "--seed", "3"])
    assert args.func(args) == 0
    assert "accuracy:" in capsys.readouterr().out
    rl = tmp_path / "rl"
    base = ["train", "--algo", "ppo", "--model", str(sft / "final"), "--output-dir", str(rl),
            "--config", str(small), "--num-samples", "2", "--lr-scheduler", "constant"]
    args = parser.parse_args(base + ["--max-steps", "1"])
    assert args.func(args) == 0
    saved = yaml.safe_load((rl / "config.yaml").read_text())
    assert saved["algo"] == "ppo" and saved["num_samples"] == 2 and saved["seed"] == 0
    args = parser.parse_args(["train", "--output-dir", str(rl), "--resume", "--max-steps", "2"])
    assert args.func(args) == 0
    assert [r["step"] for r in read_metrics(rl / "metrics.jsonl")] == [0, 1, 2]  # step 0: start model



def test_kl_estimators_and_chunking(tmp_path):
    tr = make_trainer(rl_config(algo="vmpo", max_steps=1, epochs=3, learning_rate=1e-2, kl_early_stop=False,
                                kl_backtrack=None), tmp_path, out=None)
    b = tr.algo.collect(tr.ctx, 0)
    tr.algo.estep(tr.ctx, b)
    tr._mstep(b)  # move the policy away from pi_old
    out = tr.forward(b, train=False, need_logits=True, grad=False)
    exact = float(tr._kl_old(b, out))
    tr.cfg.kl_chunk_size = 3
    assert float(tr._kl_old(b, out)) == pytest.approx(exact, rel=1e-5)
    tr.cfg.kl_estimator = "k3"
    k3 = float(tr._kl_old(b, out))
    assert exact > 0 and k3 > 0
    # both estimate the same per-token KL(pi_old || pi_theta) on the sampled tokens
    assert k3 == pytest.approx(exact, rel=0.75)


def test_tensorboard_logging_when_asked(tmp_path):
    make_trainer(sft_config(max_steps=2, tensorboard=True), tmp_path).train()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
