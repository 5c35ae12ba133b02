"""Bad input (issue 2 "Bad input"): wrong or mismatched shapes, ρ outside (0, 1],
ε ≤ 0, non-finite advantages or log-probs raise a ``ValueError`` naming the argument
and what was expected — never a silent NaN.
"""

import math

import pytest
import torch

import emrl.objectives as O

torch.set_num_threads(1)

nan = float("nan")
A = torch.randn(8)
XI = torch.tensor(0.0, requires_grad=True)
R = torch.randn(5, 2)
F0 = torch.zeros(5, 2, dtype=torch.bool)
LP = -torch.rand(2, 4)
LOGITS = torch.randn(2, 4, 6)
LABELS = torch.randint(0, 6, (2, 4))


def with_nan(x, idx=0):
    y = x.clone()
    y.view(-1)[idx] = nan
    return y


CASES = [
    # V-MPO
    ("advantages", "dimension", lambda: O.vmpo_estep(torch.randn(2, 4), XI, 0.1)),
    ("advantages", "finite", lambda: O.vmpo_estep(with_nan(A), XI, 0.1)),
    ("advantages", "finite", lambda: O.vmpo_estep(A.clone().fill_(math.inf), XI, 0.1)),
    ("top_fraction", r"\(0, 1\]", lambda: O.vmpo_estep(A, XI, 0.1, top_fraction=0.0)),
    ("top_fraction", r"\(0, 1\]", lambda: O.vmpo_estep(A, XI, 0.1, top_fraction=1.5)),
    ("eps_eta", "> 0", lambda: O.vmpo_estep(A, XI, 0.0)),
    ("eps_eta", "> 0", lambda: O.vmpo_estep(A, XI, -1.0)),
    ("xi", "0-dim", lambda: O.vmpo_estep(A, torch.zeros(2), 0.1)),
    ("xi", "finite", lambda: O.vmpo_estep(A, torch.tensor(nan), 0.1)),
    ("mask", "same shape", lambda: O.vmpo_estep(A, XI, 0.1, mask=torch.ones(7, dtype=torch.bool))),
    ("mask", "at least one", lambda: O.vmpo_estep(A, XI, 0.1, mask=torch.zeros(8, dtype=torch.bool))),
    ("mask", "0/1", lambda: O.vmpo_weights(A, 1.0, mask=torch.full((8,), 0.5))),
    ("param", "softplus", lambda: O.vmpo_estep(A, XI, 0.1, param="exp")),
    ("eta", "> 0", lambda: O.vmpo_weights(A, 0.0)),
    ("eta", "finite", lambda: O.vmpo_weights(A, math.nan)),
    ("advantages", "empty", lambda: O.vmpo_weights(torch.zeros(0), 1.0)),
    # AWR / DAR
    ("temperature", "> 0", lambda: O.awr_weights(A, 0.0)),
    ("max_weight", "> 0", lambda: O.awr_weights(A, 1.0, max_weight=-1.0)),
    ("logp_ref", "same shape", lambda: O.dar_weights(torch.zeros(7), torch.zeros(8), A, 0.1, 0.1)),
    ("logp_sample", "finite", lambda: O.dar_weights(torch.zeros(8), with_nan(torch.zeros(8)), A, 0.1, 0.1)),
    ("logp_ref", "finite", lambda: O.dar_weights(torch.full((8,), -math.inf), torch.zeros(8), A, 0.1, 0.1)),
    ("alpha", ">= 0", lambda: O.dar_weights(torch.zeros(8), torch.zeros(8), A, -0.1, 0.1)),
    ("alpha \\+ beta", "> 0", lambda: O.dar_weights(torch.zeros(8), torch.zeros(8), A, 0.0, 0.0)),
    ("form", "importance", lambda: O.dar_weights(torch.zeros(8), torch.zeros(8), A, 0.1, 0.1, form="x")),
    # returns
    ("values", "same shape", lambda: O.gae(R, torch.zeros(5, 3), R, F0, F0, 0.9, 0.9)),
    ("gamma", r"\[0, 1\]", lambda: O.gae(R, R, R, F0, F0, 1.5, 0.9)),
    ("lam", r"\[0, 1\]", lambda: O.gae(R, R, R, F0, F0, 0.9, -0.1)),
    ("rewards", "finite", lambda: O.gae(with_nan(R), R, R, F0, F0, 0.9, 0.9)),
    ("next_values", "finite", lambda: O.nstep_targets(R, R, with_nan(R), F0, F0, 0.9, 3)),
    ("dones", "0/1", lambda: O.gae(R, R, R, F0, torch.full((5, 2), 2.0), 0.9, 0.9)),
    ("terminated", "shape", lambda: O.gae(R, R, R, torch.zeros(5, dtype=torch.bool), F0, 0.9, 0.9)),
    ("n", ">= 1", lambda: O.nstep_targets(R, R, R, F0, F0, 0.9, 0)),
    ("bootstrap", "shape", lambda: O.discounted_returns(R, F0, 0.9, torch.zeros(3))),
    ("group_size", "multiple", lambda: O.group_advantages(torch.zeros(5), 2)),
    ("mode", "mean", lambda: O.group_advantages(torch.zeros(4), 2, mode="median")),
    ("adv", "finite", lambda: O.normalize_advantages(with_nan(A))),
    # M-step
    ("labels", "shape", lambda: O.token_logprobs(LOGITS, torch.zeros(2, 5, dtype=torch.long))),
    ("labels", "integer", lambda: O.token_logprobs(LOGITS, torch.zeros(2, 4))),
    ("labels", r"\[0, 6\)", lambda: O.token_logprobs(LOGITS, LABELS + 6)),
    ("logits", "NaN", lambda: O.token_logprobs(with_nan(LOGITS), LABELS)),
    ("chunk_size", "positive", lambda: O.token_logprobs(LOGITS, LABELS, chunk_size=0)),
    ("token_logp", "finite", lambda: O.weighted_nll(with_nan(LP))),
    ("weights", r"\[B\]", lambda: O.weighted_nll(LP, None, torch.ones(3))),
    ("weights", "same shape", lambda: O.weighted_nll(LP, None, torch.ones(2, 5))),
    ("weights", "finite", lambda: O.weighted_nll(LP, None, with_nan(torch.ones(2)))),
    ("reduction", "sum", lambda: O.weighted_nll(LP, reduction="avg")),
    ("mask", "same shape", lambda: O.weighted_nll(LP, torch.ones(2, 3, dtype=torch.bool))),
    ("logits_q", "same shape", lambda: O.categorical_kl(LOGITS, torch.randn(2, 4, 5))),
    ("logits_p", "NaN", lambda: O.categorical_kl(with_nan(LOGITS), LOGITS)),
    ("logq", "finite", lambda: O.kl_k3(LP, with_nan(LP))),
    ("logq", "same shape", lambda: O.kl_k1(LP, LP[:, :2])),
    ("eps_alpha", "> 0", lambda: O.alpha_trust_region(torch.tensor(0.1), XI, 0.0)),
    ("kl", "0 dimension", lambda: O.alpha_trust_region(torch.zeros(3), XI, 0.1)),
    ("kl", "finite", lambda: O.alpha_trust_region(torch.tensor(nan), XI, 0.1)),
    ("std", "> 0", lambda: O.gaussian_kl_decoupled(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3, 2), torch.zeros(3, 2))),
    ("mu", "same shape", lambda: O.gaussian_kl_decoupled(torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3, 1), torch.ones(3, 2))),
    ("teacher_logits", "NaN", lambda: O.distillation_target(with_nan(LOGITS))),
    ("top_n", "group_size", lambda: O.nbest_weights(torch.zeros(4), 2, top_n=3)),
    # PPO
    ("clip_eps", "> 0", lambda: O.ppo_clip_loss(LP, LP, LP, clip_eps=0.0)),
    ("logp_old", "finite", lambda: O.ppo_clip_loss(LP, with_nan(LP), LP)),
    ("logp_new", "finite", lambda: O.ppo_clip_loss(with_nan(LP), LP, LP)),
    ("advantages", "finite", lambda: O.ppo_clip_loss(LP, LP, with_nan(LP))),
    ("advantages", "shape", lambda: O.ppo_clip_loss(LP, LP, torch.zeros(3))),
    ("advantages", r"\[B\]", lambda: O.ppo_clip_loss(LP, LP, LP, level="sequence")),
    ("level", "token", lambda: O.ppo_clip_loss(LP, LP, LP, level="episode")),
    ("returns", "same shape", lambda: O.value_loss(torch.zeros(3), None, torch.zeros(4))),
    ("clip", "> 0", lambda: O.value_loss(torch.zeros(3), torch.zeros(3), torch.zeros(3), clip=-1.0)),
    ("estimator", "k3", lambda: O.approx_kl(LP, LP, estimator="k9")),
]


@pytest.mark.parametrize("arg,expected,call", CASES, ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input_raises_value_error_naming_argument(arg, expected, call):
    with pytest.raises(ValueError) as exc:
        call()
    msg = str(exc.value)
    assert __import__("re").search(arg, msg), msg
    assert __import__("re").search(expected, msg), msg


def test_valid_edge_inputs_do_not_raise():
    # ρ = 1 and a tiny ρ are valid; -inf logits (masked vocabulary) are valid
    O.vmpo_weights(A, 1.0, top_fraction=1.0)
    O.vmpo_weights(A, 1.0, top_fraction=1e-6)
    lg = LOGITS.clone()
    lg[..., 0] = -math.inf
    lp = O.token_logprobs(lg, LABELS.clamp_min(1))
    assert bool(torch.isfinite(lp).all())
    assert bool(torch.isfinite(O.entropy_from_logits(lg)).all())


def test_checks_flag_skips_only_the_non_finite_scans_and_restores():
    assert O.checks_enabled()
    bad = with_nan(LP)
    with O.checks(enabled=False):
        assert not O.checks_enabled()
        loss, _ = O.ppo_clip_loss(LP, LP, bad)  # the NaN scan is skipped: NaN propagates
        assert bool(torch.isnan(loss))
        with pytest.raises(ValueError, match="logp_old.*same shape"):  # shape checks still run
            O.ppo_clip_loss(LP, torch.zeros(3), LP)
        with pytest.raises(ValueError, match="clip_eps"):  # argument checks still run
            O.ppo_clip_loss(LP, LP, LP, clip_eps=0.0)
        with O.checks(enabled=True):  # nests
            with pytest.raises(ValueError, match="advantages.*finite"):
                O.ppo_clip_loss(LP, LP, bad)
        assert not O.checks_enabled()
    assert O.checks_enabled()
    with pytest.raises(RuntimeError), O.checks(enabled=False):  # restored after an exception
        raise RuntimeError("boom")
    assert O.checks_enabled()
    with pytest.raises(ValueError, match="advantages.*finite"):
        O.ppo_clip_loss(LP, LP, bad)
    with pytest.raises(ValueError, match="enabled must be a bool"), O.checks(enabled="no"):
        pass
