"""rq2, rq5 and gtrxl-gating: each smoke preset end to end (real runs of the CLI and the
API on CartPole, bsuite memory_len and the tiny LM), plus their measurement helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emrl.cli import main as cli_main
from emrl.experiments.framework import read_records


def _run(name, tmp_path, capsys):
    out = tmp_path / name
    assert cli_main(["experiment", "run", name, "--preset", "smoke", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    records, problems = read_records(out)
    assert not problems
    return out, {r["cell"]: r for r in records}


def test_list_names_the_three_experiments(capsys):
    assert cli_main(["experiment", "list"]) == 0
    text = capsys.readouterr().out
    for name in ("rq2", "rq5", "gtrxl-gating"):
        assert name in text


def test_rq5_smoke_measures_dropout_noise_at_theta_old(tmp_path, capsys):
    out, recs = _run("rq5", tmp_path, capsys)
    p0, p1 = recs["probe-p0-s0"]["result"], recs["probe-p0.1-s0"]["result"]
    # without dropout the M-step pass at θ_old reproduces π_old: ratio 1, nothing clipped,
    # approximate KL 0, the same gradient
    assert p0["ratio_std"] < 1e-5 and p0["clip_fraction"] == 0.0 and abs(p0["approx_kl_k3"]) < 1e-6
    assert p0["ppo_grad/cos_to_nodrop_each"] == pytest.approx(1.0, abs=1e-5)
    # with dropout the same parameters give a spread of ratios and a positive KL reading
    assert p1["ratio_std"] > 0.01 and p1["approx_kl_k3"] > 0 and p1["ppo_grad/cos_to_nodrop_each"] < 1.0
    # the trainer's own first-minibatch ratio spread: 0 without dropout, > 0 with it
    assert recs["train-ppo-p0-s0"]["result"]["ratio_std_first"] < 1e-5
    assert recs["train-ppo-p0.1-s0"]["result"]["ratio_std_first"] > 0.01
    report = (out / "report.md").read_text()
    assert "Mechanism at θ = θ_old" in report and "(mechanism.png)" in report and "## Verdict" in report
    assert (out / "mechanism.png").exists() and (out / "accuracy.png").exists()


def test_rq2_smoke_records_per_update_mechanism_and_outcome(tmp_path, capsys):
    out, recs = _run("rq2", tmp_path, capsys)
    for algo in ("ppo", "vmpo"):
        mech = recs[f"mech-{algo}-s0"]["result"]
        assert len(mech["updates"]) == 2  # updates 2 and 3 (the first starts from the initialisation)
        assert all(u["kl"] > 0 and np.isfinite(u["pi_gain"]) for u in mech["updates"])
        assert 0.0 <= mech["kl_within_eps_alpha"] <= 1.0
        outcome = recs[f"outcome-CartPole-v1-mlp-{algo}-s0"]["result"]
        assert outcome["samples"] == 512 and np.isfinite(outcome["final"])
    assert recs["mech-vmpo-s0"]["result"]["eps_alpha"] == 0.01
    # the LM arms: V-MPO measures its realised KL against ε_α; rejection-sampling SFT has no trust region
    vm, rs = recs["lm-vmpo-s0"]["result"], recs["lm-rs-sft-s0"]["result"]
    assert vm["kl_budget_used_mean"] is not None and rs["kl_budget_used_mean"] is None
    assert 0.0 <= vm["accuracy_final"] <= 1.0 and 0.0 <= rs["accuracy_final"] <= 1.0
    report = (out / "report.md").read_text()
    assert "Mechanism per update" in report and "Outcome at matched env steps" in report
    assert "Boltzmann" in report  # says plainly what is not measured


def test_rq2_update_stats_are_zero_for_an_unchanged_policy():
    import gymnasium as gym

    from emrl.control.agent import Agent
    from emrl.experiments.rq2 import _probe_batch, _update_stats

    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    agent = Agent(env.observation_space, env.action_space).eval()
    obs, actions, adv = _probe_batch(agent, "CartPole-v1", 2, 16, seed=3, gamma=0.98, lam=0.8)
    assert obs.shape == (16, 2, 4) and actions.shape == (16, 2)
    assert abs(float(adv.mean())) < 1e-5
    st = _update_stats(agent, agent, obs, actions, adv, clip=0.2, eps_alpha=0.01, eta=1.0)
    assert st["kl"] == pytest.approx(0.0, abs=1e-7) and st["clip_outside"] == 0.0
    assert st["pi_gain"] == pytest.approx(0.0, abs=1e-5) and st["vmpo_wll_gain"] == pytest.approx(0.0, abs=1e-6)
    # a changed policy moves every number
    other = Agent(env.observation_space, env.action_space).eval()
    st2 = _update_stats(agent, other, obs, actions, adv, clip=0.2, eps_alpha=0.01, eta=1.0)
    assert st2["kl"] > 0 and st2["kl_over_eps_alpha"] == pytest.approx(st2["kl"] / 0.01)


def test_gating_smoke_runs_each_variant_and_reports_rates(tmp_path, capsys):
    out, recs = _run("gtrxl-gating", tmp_path, capsys)
    assert set(recs) == {"trxl-lr0.01-s0", "gtrxl-gru-lr0.01-s0"}
    for r in recs.values():
        assert r["result"]["status"] == "ok" and np.isfinite(r["result"]["final"])
        assert isinstance(r["result"]["solved"], bool)
    cfg = json.loads((out / "experiment.json").read_text())
    assert cfg["params"]["max_grad_norm"] == 40.0
    report = (out / "report.md").read_text()
    assert "| trxl | 1 |" in report and "Wilson" in report and "(failure_rates.png)" in report


def test_wilson_interval():
    from emrl.experiments.gtrxl_gating import wilson

    lo, hi = wilson(0, 9)
    assert lo == 0.0 and hi == pytest.approx(0.299, abs=1e-3)
    lo, hi = wilson(9, 9)
    assert hi == 1.0 and lo == pytest.approx(0.701, abs=1e-3)
    lo, hi = wilson(3, 9)
    assert lo < 1 / 3 < hi
