"""SFT targets as E-steps (spec §6 "E-step / M-step for SFT") and their M-step.

Issue 2 items covered here: δ on demonstrations, label smoothing, n-best with weights,
teacher distillation — each checked against torch's own cross-entropy / KL, so a wrong
target distribution or reduction fails.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from emrl.objectives import (
    SoftTarget,
    delta_target,
    distillation_target,
    label_smoothing_target,
    nbest_weights,
    soft_target_nll,
    token_logprobs,
    weighted_nll,
)

torch.set_num_threads(1)


def data(B=3, T=6, V=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 2
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[1, -2:] = -100
    return logits, labels


def test_delta_target_is_plain_cross_entropy():
    logits, labels = data()
    ref = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100)
    loss, info = soft_target_nll(logits, delta_target(labels))
    assert float(loss) == pytest.approx(float(ref), rel=1e-12)
    assert info.num_tokens == 16
    # and it agrees with token_logprobs + weighted_nll
    lp = token_logprobs(logits, labels)
    loss2, _ = weighted_nll(lp, labels != -100, reduction="token_mean")
    assert float(loss2) == pytest.approx(float(ref), rel=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_matches_torch(eps):
    logits, labels = data(seed=1)
    ref = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, label_smoothing=eps)
    for cs in [None, 1, 4]:
        loss, _ = soft_target_nll(logits, label_smoothing_target(labels, eps), chunk_size=cs)
        assert float(loss) == pytest.approx(float(ref), rel=1e-10)
    # the same target written out as explicit probabilities
    V = logits.shape[-1]
    q = F.one_hot(labels.clamp_min(0), V).double() * (1 - eps) + eps / V
    loss_p, _ = soft_target_nll(logits, q, mask=labels != -100)
    assert float(loss_p) == pytest.approx(float(ref), rel=1e-10)


def test_distillation_is_forward_kl_to_teacher_up_to_a_constant():
    logits, _ = data(seed=2)
    teacher = torch.randn_like(logits)
    tau = 2.0
    target = distillation_target(teacher, temperature=tau)
    q = torch.softmax(teacher / tau, -1)
    loss, _ = soft_target_nll(logits, target)
    kl = F.kl_div(torch.log_softmax(logits, -1), q, reduction="none").sum(-1).mean()
    entropy = -(q * q.log()).sum(-1).mean()
    assert float(loss) == pytest.approx(float(kl + entropy), rel=1e-6)
    # the gradient of the distillation loss is the gradient of the forward KL
    lg = logits.clone().requires_grad_()
    (g1,) = torch.autograd.grad(soft_target_nll(lg, target)[0], lg)
    (g2,) = torch.autograd.grad(F.kl_div(torch.log_softmax(lg, -1), q.double(), reduction="none").sum(-1).mean(), lg)
    assert torch.allclose(g1, g2, atol=1e-6)
    # a student equal to the teacher is at the minimum: zero gradient
    same = (teacher / tau).clone().requires_grad_()
    (g0,) = torch.autograd.grad(soft_target_nll(same, target)[0], same)
    assert float(g0.abs().max()) < 1e-6


def test_sequence_weights_in_soft_target():
    logits, labels = data(seed=3)
    w = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    tgt = delta_target(labels)._replace(weights=w)
    loss, _ = soft_target_nll(logits, tgt, reduction="sum")
    lp = token_logprobs(logits, labels)
    ref = -sum(float(w[i]) * float(lp[i][labels[i] != -100].sum()) for i in range(3))
    assert float(loss) == pytest.approx(ref, rel=1e-12)
    assert isinstance(tgt, SoftTarget)


def test_nbest_weights():
    scores = torch.tensor([1.0, 3.0, 2.0, 2.0, 5.0, 5.0, 0.0, 5.0])
    # uniform over the 2 best of each group of 4; ties: lower index wins
    w, info = nbest_weights(scores, 4, top_n=2)
    assert w.tolist() == [0.0, 0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0]
    assert info.ess.tolist() == [2.0, 2.0]
    # softmax of scores / temperature over all candidates
    w, _ = nbest_weights(scores, 4, temperature=0.5)
    assert torch.allclose(w[:4], torch.softmax(scores[:4] / 0.5, 0))
    assert torch.allclose(w.view(2, 4).sum(1), torch.ones(2))
    # a masked-out group gets zero mass, not NaN
    mask = torch.tensor([True] * 4 + [False] * 4)
    w, info = nbest_weights(scores, 4, top_n=1, mask=mask)
    assert w.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert info.ess.tolist() == [1.0, 0.0]
    # n-best as an M-step target: sum over candidates of w_j log π(y_j)
    lp = -torch.rand(8, 3, dtype=torch.float64)
    loss, _ = weighted_nll(lp, None, w.double())
    assert float(loss) == pytest.approx(-float(lp[1].sum()))


def test_soft_target_rejects_bad_targets():
    logits, labels = data()
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothing_target(labels, 1.0)
    with pytest.raises(ValueError, match="probs"):
        soft_target_nll(logits, torch.rand(3, 6, 5, dtype=torch.float64))
    bad = labels.clone()
    bad[0, 0] = 99
    with pytest.raises(ValueError, match="labels"):
        soft_target_nll(logits, bad)
    # mass on a token with a -inf logit
    lg = logits.clone()
    lg[..., 0] = -math.inf
    with pytest.raises(ValueError, match="-inf"):
        soft_target_nll(lg, torch.zeros(3, 6, dtype=torch.long))


@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 6),
    V=st.integers(2, 30),
    eps=st.floats(0.0, 0.99),
    chunk=st.integers(1, 7),
    log_scale=st.floats(-2, 2),
    seed=st.integers(0, 2**16),
)
def test_property_label_smoothing_matches_torch(B, T, V, eps, chunk, log_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=gen, dtype=torch.float64) * 10.0**log_scale
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[torch.rand(B, T, generator=gen) < 0.3] = -100
    if bool((labels == -100).all()):
        labels[0, 0] = 0
    ref = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, label_smoothing=eps)
    loss, _ = soft_target_nll(logits, label_smoothing_target(labels, eps), chunk_size=chunk)
    assert float(loss) == pytest.approx(float(ref), rel=1e-9, abs=1e-12)
