"""Issue 4: each algorithm raises mean reward on a task with a known optimum, and the
mechanics of each plug-in through the trainer's own code path (top-k count, η moving
toward the KL budget, α responding to KL, PPO clip fraction, DAR = V-MPO as α → 0)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from trainer_helpers import make_trainer, rl_config

# Known optimum: reward = fraction of digits (1.0 for an all-digit completion); a fresh
# model starts near 0.1. Settings per algorithm that learn in a dozen updates.
LEARNING = {
    "vmpo": dict(epochs=4, learning_rate=1e-2, eps_alpha=0.1),
    "awr": dict(epochs=4, learning_rate=1e-2, eps_alpha=0.1, normalize_advantages=True),
    "dar": dict(epochs=4, learning_rate=1e-2, eps_alpha=0.1, normalize_advantages=True, dar_beta=0.4),
    "ppo": dict(epochs=4, learning_rate=1e-2),
    "ppo-seq": dict(epochs=4, learning_rate=1e-2, ppo_level="sequence", target_kl=None),
}


@pytest.mark.parametrize("name", list(LEARNING))
def test_algorithm_raises_mean_reward(tmp_path, name):
    algo = name.split("-")[0]
    cfg = rl_config(algo=algo, max_steps=14, **LEARNING[name])
    tr = make_trainer(cfg, tmp_path, out=None)
    rewards = []
    tr.train(callback=lambda s, r: rewards.append(r["reward/mean"]))
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.1, (name, rewards)


def _fixed_batch(tr, rewards):
    """A batch of scored completions (no sampling) run through the plug-in's own finishing."""
    rows = tr.task.train[: len(rewards) // tr.cfg.num_samples]
    k = tr.cfg.num_samples
    prompts = [r["prompt"] for r in rows for _ in range(k)]
    texts = [f"{i % 7}a" for i in range(len(rewards))]
    b = tr.encode(prompts, texts, [r for r in rows for _ in range(k)])
    b["rewards"] = torch.tensor(rewards, dtype=torch.float32)
    return tr.algo.finish_batch(tr.ctx, b)


def test_vmpo_topk_count_and_rho_floor(tmp_path):
    for rho, n_expected in ((0.5, 8), (0.25, 4), (0.01, 1)):  # k = max(1, floor(rho N)), N = 16
        tr = make_trainer(rl_config(algo="vmpo", top_fraction=rho), tmp_path, out=None)
        b = _fixed_batch(tr, [float(i % 5) + 0.1 * i for i in range(16)])
        m = tr.algo.estep(tr.ctx, b)
        assert int((b["weights"] > 0).sum()) == n_expected
        assert m["estep/selected_fraction"] == pytest.approx(n_expected / 16)
        assert float(b["weights"].sum()) == pytest.approx(1.0, abs=1e-6)


def test_vmpo_eta_moves_toward_kl_budget(tmp_path):
    eps = 0.3
    tr = make_trainer(rl_config(algo="vmpo", eps_eta=eps, eta_init=20.0, dual_lr=0.3, top_fraction=1.0),
                      tmp_path, out=None)
    b = _fixed_batch(tr, [float(i % 4) for i in range(16)])
    gaps = []
    for _ in range(150):
        m = tr.algo.estep(tr.ctx, b)
        gaps.append(abs(m["estep/kl_to_uniform"] - eps))
    # from a far too high temperature (weights ~ uniform, KL ~ 0) η falls until the
    # E-step's KL to uniform meets its budget ε_η
    assert tr.algo.eta() < 20.0
    assert gaps[-1] < 0.02 < gaps[0]


def test_vmpo_fixed_temperature_mode_keeps_eta(tmp_path):
    tr = make_trainer(rl_config(algo="vmpo", adaptive_temperature=False, eta_init=0.7), tmp_path, out=None)
    b = _fixed_batch(tr, [float(i % 4) for i in range(16)])
    for _ in range(3):
        m = tr.algo.estep(tr.ctx, b)
    assert m["estep/eta"] == pytest.approx(0.7)
    assert "loss/temperature" not in m


def test_alpha_responds_to_kl(tmp_path):
    alphas = {}
    for eps in (1e-6, 10.0):
        cfg = rl_config(algo="vmpo", max_steps=3, epochs=3, learning_rate=1e-2, eps_alpha=eps, dual_lr=0.2)
        tr = make_trainer(cfg, tmp_path, out=None)
        recs = []
        tr.train(callback=lambda s, r, recs=recs: recs.append(r))
        assert all(r["mstep/kl"] > 0 for r in recs)
        alphas[eps] = tr.alpha_param.detach().clone()
    a0 = torch.nn.functional.softplus(torch.tensor(math.log(math.e - 1)))  # alpha_init = 1
    # KL above a tiny budget raises α; KL below a huge budget lowers it (spec §5 eq. 1)
    assert torch.nn.functional.softplus(alphas[1e-6]) > a0 + 0.1
    assert torch.nn.functional.softplus(alphas[10.0]) < a0 - 0.1


def test_per_step_alpha_under_the_kl_early_stop_cannot_rise(tmp_path):
    """Why language models default to dual_schedule='update' (docs/architecture.md): with the
    M-step stopped once the KL reaches ε_α, a per-step α only sees KLs at or under its budget."""
    cfg = rl_config(algo="vmpo", max_steps=3, epochs=3, learning_rate=1e-2, eps_alpha=1e-6, dual_lr=0.2,
                    dual_schedule="minibatch")
    tr = make_trainer(cfg, tmp_path, out=None)
    tr.train()
    a0 = torch.nn.functional.softplus(torch.tensor(math.log(math.e - 1)))
    assert torch.nn.functional.softplus(tr.alpha_param.detach()) < a0


def test_ppo_clip_fraction_positive_once_policy_moves(tmp_path):
    cfg = rl_config(algo="ppo", max_steps=2, epochs=6, learning_rate=3e-2, target_kl=None, minibatch_size=8)
    tr = make_trainer(cfg, tmp_path, out=None)
    recs = []
    tr.train(callback=lambda s, r: recs.append(r))
    assert recs[0]["ppo/ratio_std"] == pytest.approx(0.0, abs=1e-5)  # no dropout: ratio 1 at first
    assert max(r["ppo/clip_fraction"] for r in recs) > 0.0
    assert max(r["ppo/approx_kl"] for r in recs) > 0.0


def test_ppo_ratio_std_measures_dropout(tmp_path):
    stds = {}
    for on in (False, True):
        cfg = rl_config(algo="ppo", max_steps=1, dropout=0.3, mstep_dropout=on)
        tr = make_trainer(cfg, tmp_path, out=None)
        stds[on] = tr.train()["ppo/ratio_std"]
    # first minibatch, before any parameter change: only dropout can move the ratio
    assert stds[False] == pytest.approx(0.0, abs=1e-5)
    assert stds[True] > 0.05


def test_ppo_target_kl_stops_epochs(tmp_path):
    cfg = rl_config(algo="ppo", max_steps=1, epochs=20, learning_rate=3e-2, target_kl=1e-4, minibatch_size=8)
    tr = make_trainer(cfg, tmp_path, out=None)
    rec = tr.train()
    assert rec.get("ppo/early_stop") == 1.0


def test_dar_weights_equal_vmpo_weights_as_alpha_to_zero(tmp_path):
    eta = 0.8
    rewards = [float((i * 7) % 5) / 4 for i in range(16)]
    dar = make_trainer(rl_config(algo="dar", dar_alpha=1e-9, dar_beta=eta, dar_clip_max=None,
                                 kl_ref_coef=0.0), tmp_path, out=None)
    b = _fixed_batch(dar, rewards)
    # make π_ref differ from π_t so only the α → 0 limit can explain equality
    with torch.no_grad():
        b["ref_logp"] = b["ref_logp"] + torch.randn_like(b["ref_logp"]) * b["completion_mask"]
    dar.algo.estep(dar.ctx, b)
    vm = make_trainer(rl_config(algo="vmpo", adaptive_temperature=False, eta_init=eta, top_fraction=1.0,
                                    min_advantage=None),
                      tmp_path, out=None)
    b2 = copy.copy(b)
    b2.tensors = dict(b.tensors)
    vm.algo.estep(vm.ctx, b2)
    assert torch.allclose(b["weights"], b2["weights"], atol=1e-6)
    # and with a non-vanishing α they differ
    dar2 = make_trainer(rl_config(algo="dar", dar_alpha=0.5, dar_beta=eta - 0.5 + 1e-9, dar_clip_max=None),
                        tmp_path, out=None)
    b3 = copy.copy(b)
    b3.tensors = dict(b.tensors)
    dar2.algo.estep(dar2.ctx, b3)
    assert not torch.allclose(b3["weights"], b2["weights"], atol=1e-3)


def test_dar_logs_decomposed_terms(tmp_path):
    tr = make_trainer(rl_config(algo="dar", max_steps=1), tmp_path, out=None)
    rec = tr.train()
    for k in ("dar/log_ref_term", "dar/log_sample_term", "dar/adv_term", "estep/ess"):
        assert k in rec and math.isfinite(rec[k])


def test_per_token_weights_and_value_baseline(tmp_path):
    cfg = rl_config(algo="vmpo", max_steps=2, weight_level="token", baseline="value", kl_ref_coef=0.1)
    tr = make_trainer(cfg, tmp_path, out=None)
    rec = tr.train()
    assert "loss/value" in rec and math.isfinite(rec["loss/value"])
    assert "mstep/kl_ref" in rec
    # the value head learnt something (it starts at exactly zero)
    vh = tr.algo.value_head()
    assert float(vh.linear.bias.detach().abs()) > 0


# ------------------------------------------------------------------ issue 10: the KL budget
def _defaults(**kw):
    """RLConfig defaults except the sizes of the test task (no learning-rate tuning)."""
    from emrl.lm.train_config import RLConfig

    base = dict(max_steps=3, batch_size=8, num_samples=4, max_new_tokens=4, num_threads=1,
                eval_num_prompts=8, eval_samples=2, eval_every=0)
    base.update(kw)
    return RLConfig(**base)


@pytest.mark.parametrize("algo", ["vmpo", "awr", "dar"])
def test_default_mstep_spends_the_kl_budget(tmp_path, algo):
    """At default settings one M-step moves the policy by 0.5-2x eps_alpha (per token)."""
    cfg = _defaults(algo=algo)
    tr = make_trainer(cfg, tmp_path, out=None)
    for _ in range(3):
        b = tr.algo.collect(tr.ctx, tr.step)
        tr.algo.estep(tr.ctx, b)
        if not getattr(tr.algo, "target_empty", False):
            break
    # the states the trust region covers: V-MPO's selected samples (trust_region_states)
    keep = b if cfg.trust_region_states == "all" or algo != "vmpo" else b.select(
        torch.nonzero(b["weights"].reshape(len(b), -1).sum(1) > 0).flatten())
    old = tr.forward(keep, train=False, need_logits=True, grad=False).logits
    m = tr._mstep(b)
    assert 0.5 * cfg.eps_alpha <= m["mstep/kl"] <= 2.0 * cfg.eps_alpha, m
    # the logged value is the realised KL: an independent pass agrees
    from emrl import objectives as O

    new = tr.forward(keep, train=False, need_logits=True, grad=False).logits
    mask = keep["completion_mask"][:, 1:]
    kl = float(O.categorical_kl(old, new, mask=mask).sum() / mask.sum())
    assert kl == pytest.approx(m["mstep/kl"], rel=1e-4)


@pytest.mark.parametrize("lr", [3e-2, 3e-1])
def test_large_learning_rates_stay_inside_the_budget(tmp_path, lr):
    cfg = _defaults(algo="vmpo", learning_rate=lr, max_steps=4)
    tr = make_trainer(cfg, tmp_path, out=None)
    recs = []
    tr.train(callback=lambda s, r: recs.append(r))
    kls = [r["mstep/kl"] for r in recs if not r.get("mstep/skipped")]
    assert kls and max(kls) <= cfg.kl_backtrack * cfg.eps_alpha + 1e-9
    assert any(r["mstep/backtrack_scale"] < 1.0 for r in recs if "mstep/backtrack_scale" in r)


def test_vmpo_target_puts_no_weight_on_non_positive_advantages(tmp_path):
    tr = make_trainer(_defaults(algo="vmpo"), tmp_path, out=None)
    b = tr.algo.collect(tr.ctx, 0)
    m = tr.algo.estep(tr.ctx, b)
    assert m["estep/weight_nonpositive"] == 0.0
    plain = make_trainer(_defaults(algo="vmpo", min_advantage=None, top_fraction=1.0), tmp_path, out=None)
    b2 = plain.algo.collect(plain.ctx, 0)
    m2 = plain.algo.estep(plain.ctx, b2)
    if m2["estep/positive_fraction"] < 1.0:  # plain top-k over everything weights ties and losers
        assert m2["estep/weight_nonpositive"] > 0.0


def test_equal_rewards_everywhere_are_a_no_op_that_says_so(tmp_path, capsys):
    def constant(prompts, completions, **_):
        return [0.0] * len(completions)

    tr = make_trainer(_defaults(algo="vmpo", max_steps=2), tmp_path, out=None, reward=constant)
    before = {k: v.clone() for k, v in tr.lm.state_dict().items()}
    recs = []
    tr.train(callback=lambda s, r: recs.append(r))
    assert all(r["mstep/skipped"] == 1.0 and r["estep/empty"] == 1.0 for r in recs)
    assert all(math.isfinite(v) for r in recs for v in r.values() if isinstance(v, float))
    assert all(torch.equal(before[k], v) for k, v in tr.lm.state_dict().items())
    assert "no sample beat its baseline" in capsys.readouterr().err


def test_max_minutes_stops_on_time(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EMRL_PROGRESS", "log")  # the progress lines of a log file, as in the demo
    cfg = _defaults(algo="vmpo", max_steps=10**6, max_minutes=0.05)  # 3 s of training
    tr = make_trainer(cfg, tmp_path, out="run")
    last = tr.train()
    assert 1 <= tr.step < 10**6 and tr.train_time >= 3.0
    # the budget is checked before each update: at most one update past it
    per_update = tr.train_time / tr.step
    assert tr.train_time <= 3.0 + 2 * per_update + 1.0
    assert "--max-minutes 0.05: stopped after" in capsys.readouterr().err
    assert last["step"] == tr.step and (tmp_path / "run" / "final").is_dir()


def test_max_minutes_must_be_positive():
    from emrl.errors import ConfigError

    with pytest.raises(ConfigError, match="max_minutes must be > 0"):
        _defaults(max_minutes=0).validate()
