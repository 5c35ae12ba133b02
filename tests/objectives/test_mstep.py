"""M-step: token log-probs, weighted NLL, soft targets, KL, α dual (spec §5 eq. 1, §6).

Issue 2 test bullets covered here:
- The α-dual loss raises α when KL > ε_α and lowers it when KL < ε_α, and the policy
  gradient of the KL term equals sg[α]·∇KL.
- Exact categorical KL matches torch.distributions; the k3 estimator's mean matches the
  exact KL on samples within tolerance; chunked KL equals unchunked.
- V-MPO's decoupled Gaussian KL (mean part + covariance part = full KL).
- Weighted NLL with per-sequence / per-token weights and masks (spec §6).
- Property-based tests (hypothesis) over shapes, masks and scales.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical, Normal, kl_divergence

from emrl.objectives import (
    alpha_trust_region,
    categorical_kl,
    gaussian_kl_decoupled,
    inverse_temperature_param,
    kl_k1,
    kl_k2,
    kl_k3,
    temperature,
    token_logprobs,
    weighted_nll,
)

torch.set_num_threads(1)


def logits_batch(B=3, T=7, V=11, seed=0, scale=2.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=gen, dtype=dtype) * scale


# ----------------------------------------------------------------- token log-probs


def test_token_logprobs_equals_log_softmax_gather_and_chunked_equals_unchunked():
    logits = logits_batch().requires_grad_()
    labels = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(1))
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    full = token_logprobs(logits, labels)
    assert torch.allclose(full, ref, atol=1e-12)
    assert torch.allclose(full, -F.cross_entropy(logits.transpose(1, 2), labels, reduction="none"))
    (g_full,) = torch.autograd.grad(full.sum(), logits)
    for cs in [1, 2, 3, 7, 100]:
        ch = token_logprobs(logits, labels, chunk_size=cs)
        assert torch.allclose(ch, full, atol=1e-12)
        (g,) = torch.autograd.grad(ch.sum(), logits)
        assert torch.allclose(g, g_full, atol=1e-12)


def test_token_logprobs_ignore_index_and_bf16():
    logits = logits_batch(dtype=torch.float32)
    labels = torch.randint(0, 11, (3, 7), generator=torch.Generator().manual_seed(2))
    labels[0, :3] = -100
    lp = token_logprobs(logits, labels, chunk_size=2)
    assert lp[0, :3].tolist() == [0.0, 0.0, 0.0]
    assert bool((lp[0, 3:] < 0).all())
    lp16 = token_logprobs(logits.bfloat16(), labels, chunk_size=3)
    assert lp16.dtype == torch.float32
    assert torch.allclose(lp16, token_logprobs(logits.bfloat16().float(), labels), atol=1e-6)


# --------------------------------------------------------------------- weighted NLL


def test_weighted_nll_per_sequence_weights_match_spec_sum():
    gen = torch.Generator().manual_seed(3)
    lp = -torch.rand(4, 5, generator=gen, dtype=torch.float64) * 3
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]]).bool()
    w = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    loss, info = weighted_nll(lp, mask, w)
    ref = -sum(float(w[i]) * float(lp[i][mask[i]].sum()) for i in range(4))
    assert float(loss) == pytest.approx(ref)
    assert info.num_tokens == 9
    assert info.nll_per_seq.tolist() == pytest.approx([-float(lp[i][mask[i]].sum()) for i in range(4)])
    loss_tm, _ = weighted_nll(lp, mask, w, "token_mean")
    assert float(loss_tm) == pytest.approx(ref / 9)
    loss_sm, _ = weighted_nll(lp, mask, w, "seq_mean")
    ref_sm = -sum(float(w[i]) * float(lp[i][mask[i]].mean()) for i in range(3))
    assert float(loss_sm) == pytest.approx(ref_sm)
    loss_wm, _ = weighted_nll(lp, mask, w, "weighted_mean")
    assert float(loss_wm) == pytest.approx(ref / (0.1 * 3 + 0.2 * 5 + 0.3 * 1))
    # per-token weights equal to the broadcast per-sequence weights give the same loss
    loss_tok, _ = weighted_nll(lp, mask, w[:, None].expand(4, 5).clone())
    assert float(loss_tok) == pytest.approx(ref)


def test_weighted_nll_gradient_is_weight_times_mask():
    lp = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    tw = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    loss, _ = weighted_nll(lp, mask, tw)
    loss.backward()
    assert torch.equal(lp.grad, -(tw * mask))
    # a non-finite log-prob is an error, even at a masked position (never a silent NaN)
    lp2 = torch.tensor([[-1.0, float("-inf")]])
    with pytest.raises(ValueError, match="token_logp"):
        weighted_nll(lp2, torch.tensor([[True, False]]))


# -------------------------------------------------------------------- categorical KL


def test_categorical_kl_matches_torch_distributions_and_chunked_equals_unchunked():
    p = logits_batch(seed=4)
    q = logits_batch(seed=5, scale=1.0)
    ref = kl_divergence(Categorical(logits=p), Categorical(logits=q))
    kl = categorical_kl(p, q)
    assert kl.shape == (3, 7)
    assert torch.allclose(kl, ref, atol=1e-12)
    for cs in [1, 4, 5, 21, 1000]:
        assert torch.allclose(categorical_kl(p, q, chunk_size=cs), kl, atol=1e-14)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(6)) < 0.5
    km = categorical_kl(p, q, mask=mask, chunk_size=4)
    assert torch.allclose(km, torch.where(mask, ref, torch.zeros_like(ref)), atol=1e-12)
    # gradient w.r.t. the new policy equals torch.distributions'
    qg = q.clone().requires_grad_()
    (g1,) = torch.autograd.grad(categorical_kl(p, qg, chunk_size=2).sum(), qg)
    (g2,) = torch.autograd.grad(kl_divergence(Categorical(logits=p), Categorical(logits=qg)).sum(), qg)
    assert torch.allclose(g1, g2, atol=1e-12)


def test_categorical_kl_zero_prob_tokens():
    p = torch.tensor([[0.0, float("-inf"), 1.0]])
    q = torch.tensor([[1.0, 0.0, float("-inf")]])
    kl = categorical_kl(p, q)  # p puts mass on a token where q has none: +inf
    assert float(kl) == float("inf")
    kl = categorical_kl(q, torch.tensor([[1.0, 0.5, 0.0]]))  # q-as-p has a -inf logit: ok
    assert bool(torch.isfinite(kl).all())


def test_k3_mean_matches_exact_kl_on_samples():
    gen = torch.Generator().manual_seed(7)
    p_logits = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    q_logits = p_logits + 0.5 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    exact = categorical_kl(p_logits, q_logits)
    n = 200_000
    torch.manual_seed(8)
    x = Categorical(logits=p_logits).sample((n,))  # [n, 4]
    lp = torch.log_softmax(p_logits, -1).expand(n, 4, 6).gather(-1, x[..., None]).squeeze(-1)
    lq = torch.log_softmax(q_logits, -1).expand(n, 4, 6).gather(-1, x[..., None]).squeeze(-1)
    k3 = kl_k3(lp, lq)
    k1 = kl_k1(lp, lq)
    assert bool((k3 >= 0).all())
    # standard error of the mean is ~ std/sqrt(n); allow 5 SE
    for est in (k3, k1):
        se = est.std(0) / n**0.5
        assert bool(((est.mean(0) - exact).abs() < 5 * se + 1e-6).all()), (est.mean(0), exact)
    assert bool((k3.std(0) < k1.std(0)).all())  # the point of k3: lower variance
    assert torch.allclose(kl_k2(lp, lq), 0.5 * (lq - lp) ** 2)


# --------------------------------------------------------------------------- α dual


@pytest.mark.parametrize("param", ["softplus", "log"])
def test_alpha_dual_moves_alpha_towards_constraint(param):
    eps = 0.05
    for kl_value, should_rise in [(0.2, True), (0.01, False)]:
        ap = inverse_temperature_param(1.0, param, 0.0).requires_grad_()
        kl = torch.tensor(kl_value, requires_grad=True)
        opt = torch.optim.SGD([ap], lr=0.1)
        alphas = []
        for _ in range(5):
            opt.zero_grad()
            loss, info = alpha_trust_region(kl, ap, eps, param)
            loss.backward()
            opt.step()
            alphas.append(float(temperature(ap.detach(), param, 0.0)))
        diffs = [b - a for a, b in zip([1.0] + alphas, alphas, strict=False)]
        assert all(d > 0 for d in diffs) if should_rise else all(d < 0 for d in diffs)
        # gradient w.r.t. α is exactly (ε − KL)
        a = temperature(ap, param, 0.0)
        loss, _ = alpha_trust_region(kl, ap, eps, param)
        (g_ap,) = torch.autograd.grad(loss, ap, retain_graph=True)
        (da,) = torch.autograd.grad(a, ap)
        assert float(g_ap / da) == pytest.approx(eps - kl_value, rel=1e-6)


def test_alpha_dual_policy_gradient_is_sg_alpha_times_grad_kl():
    old = logits_batch(2, 3, 5, seed=9)
    theta = (old + 0.3 * logits_batch(2, 3, 5, seed=10)).requires_grad_()
    ap = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    kl = categorical_kl(old, theta).mean()
    loss, info = alpha_trust_region(kl, ap, 0.01)
    g_theta, g_ap = torch.autograd.grad(loss, [theta, ap])
    (g_kl,) = torch.autograd.grad(categorical_kl(old, theta).mean(), theta)
    alpha = float(F.softplus(torch.tensor(0.7, dtype=torch.float64)))
    assert torch.allclose(g_theta, alpha * g_kl, atol=1e-12)
    assert float(info.alpha) == pytest.approx(alpha)
    # value: α(ε − KL) + α KL = α ε
    assert float(loss.detach()) == pytest.approx(alpha * 0.01)
    assert float(g_ap) == pytest.approx((0.01 - float(kl.detach())) * float(torch.sigmoid(torch.tensor(0.7))))


# -------------------------------------------------------------- decoupled Gaussian KL


def test_gaussian_kl_decoupled_parts():
    gen = torch.Generator().manual_seed(11)
    mu_old = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    std_old = torch.rand(5, 3, generator=gen, dtype=torch.float64) + 0.2
    mu = mu_old + 0.3 * torch.randn(5, 3, generator=gen, dtype=torch.float64)
    std = std_old * (0.5 + torch.rand(5, 3, generator=gen, dtype=torch.float64))
    kl_mu, kl_cov = gaussian_kl_decoupled(mu_old, std_old, mu, std, reduction="none")

    def kl(m1, s1, m2, s2):
        return kl_divergence(Normal(m1, s1), Normal(m2, s2)).sum(-1)

    assert torch.allclose(kl_mu, kl(mu_old, std_old, mu, std_old), atol=1e-12)
    assert torch.allclose(kl_cov, kl(mu_old, std_old, mu_old, std), atol=1e-12)
    # only the mean moves: the mean part is the full KL; only the std moves: the cov part
    a, b = gaussian_kl_decoupled(mu_old, std_old, mu, std_old, reduction="none")
    assert torch.allclose(a, kl(mu_old, std_old, mu, std_old)) and bool((b.abs() < 1e-12).all())
    a, b = gaussian_kl_decoupled(mu_old, std_old, mu_old, std, reduction="none")
    assert torch.allclose(b, kl(mu_old, std_old, mu_old, std)) and bool((a == 0).all())
    # in general the mean part uses the old covariance, so the sum differs from the full KL
    assert not torch.allclose(kl_mu + kl_cov, kl(mu_old, std_old, mu, std))
    m_mean, c_mean = gaussian_kl_decoupled(mu_old, std_old, mu, std)
    assert float(m_mean) == pytest.approx(float(kl_mu.mean()))
    # the mean part does not depend on the new std, the cov part not on the new mean
    mu_r, std_r = mu.clone().requires_grad_(), std.clone().requires_grad_()
    a, b = gaussian_kl_decoupled(mu_old, std_old, mu_r, std_r)
    ga = torch.autograd.grad(a, [mu_r, std_r], allow_unused=True)
    gb = torch.autograd.grad(b, [mu_r, std_r], allow_unused=True)
    assert ga[1] is None or bool((ga[1] == 0).all())
    assert gb[0] is None or bool((gb[0] == 0).all())


# ------------------------------------------------------------------ property tests


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 4),
    T=st.integers(1, 9),
    V=st.integers(1, 40),
    chunk=st.integers(1, 12),
    log_scale=st.floats(-2, 2),
    seed=st.integers(0, 2**16),
)
def test_property_kl_and_logprobs(B, T, V, chunk, log_scale, seed):
    p = logits_batch(B, T, V, seed, 10.0**log_scale)
    q = logits_batch(B, T, V, seed + 1, 10.0**log_scale)
    kl = categorical_kl(p, q)
    assert bool((kl >= -1e-12).all())
    assert torch.allclose(kl, kl_divergence(Categorical(logits=p), Categorical(logits=q)), atol=1e-9)
    assert torch.allclose(categorical_kl(p, q, chunk_size=chunk), kl, atol=1e-12)
    assert torch.allclose(categorical_kl(p, p), torch.zeros_like(kl), atol=1e-12)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))
    lp = token_logprobs(p, labels, chunk_size=chunk)
    assert bool((lp <= 1e-12).all())
    assert torch.allclose(lp, token_logprobs(p, labels), atol=1e-12)


def test_weighted_nll_one_action_per_sample():
    lp = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    loss, info = weighted_nll(lp, torch.tensor([True, True, False]), w)
    assert float(loss) == pytest.approx(0.5 * 1 + 0.25 * 2)
    assert info.num_tokens == 2


def test_zero_probability_tokens_give_finite_gradients():
    p = torch.tensor([[0.0, float("-inf"), 1.0]], requires_grad=True)
    q = torch.tensor([[1.0, float("-inf"), 0.5]], requires_grad=True)
    kl = categorical_kl(p, q).sum()
    gp, gq = torch.autograd.grad(kl, [p, q])
    assert bool(torch.isfinite(gp).all()) and bool(torch.isfinite(gq).all())
    from emrl.objectives import entropy_from_logits

    (ge,) = torch.autograd.grad(entropy_from_logits(p).sum(), p)
    assert bool(torch.isfinite(ge).all())


def _saved_bytes_for_backward(fn, inputs):
    """Bytes autograd keeps for backward, excluding the inputs' own storage."""
    own = {x.untyped_storage().data_ptr() for x in inputs}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in own:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_chunking_keeps_no_vocabulary_sized_activations_for_backward():
    """Chunked = unchunked (values, gradients), and the chunked versions keep no
    [B, T, V]-sized activations for backward (each chunk is checkpointed)."""
    from emrl.objectives import label_smoothing_target, soft_target_nll

    B, T, V = 2, 32, 500
    gen = torch.Generator().manual_seed(12)
    p = torch.randn(B, T, V, generator=gen)
    q = torch.randn(B, T, V, generator=gen).requires_grad_()
    q16 = q.detach().bfloat16().requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=gen)
    fp32_size = q.numel() * 4
    cases = {
        "categorical_kl": (lambda cs: categorical_kl(p, q, chunk_size=cs), [p, q]),
        "soft_target_nll": (
            lambda cs: soft_target_nll(q, label_smoothing_target(labels, 0.1), chunk_size=cs)[0],
            [q],
        ),
        # bf16 logits are upcast to float32: unchunked, that copy is kept for backward
        "token_logprobs_bf16": (lambda cs: token_logprobs(q16, labels, chunk_size=cs), [q16]),
    }
    for name, (fn, inputs) in cases.items():
        full, out_full = _saved_bytes_for_backward(lambda fn=fn: fn(None), inputs)
        chunked, out_chunked = _saved_bytes_for_backward(lambda fn=fn: fn(4), inputs)
        assert full >= 0.9 * fp32_size, name
        assert chunked < 0.05 * fp32_size, name
        assert torch.allclose(out_full, out_chunked, atol=1e-6), name
        (g_full,) = torch.autograd.grad(out_full.sum(), inputs[-1])
        (g_chunk,) = torch.autograd.grad(out_chunked.sum(), inputs[-1])
        assert torch.allclose(g_full.float(), g_chunk.float(), atol=1e-6), name


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 7),
    per_token=st.booleans(),
    use_mask=st.booleans(),
    log_scale=st.floats(-3, 4),
    seed=st.integers(0, 2**16),
)
def test_property_weighted_nll_matches_loops(B, T, per_token, use_mask, log_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 10.0**log_scale
    w = torch.rand((B, T) if per_token else (B,), generator=gen, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=gen) < 0.6) if use_mask else None
    wt = w if per_token else w[:, None].expand(B, T)
    mk = mask if mask is not None else torch.ones(B, T, dtype=torch.bool)
    total = sum(-float(wt[i, t] * lp[i, t]) for i in range(B) for t in range(T) if mk[i, t])
    n_tok = int(mk.sum())
    wsum = sum(float(wt[i, t]) for i in range(B) for t in range(T) if mk[i, t])
    seq = 0.0
    for i in range(B):
        n_i = int(mk[i].sum())
        if n_i:
            seq += sum(-float(wt[i, t] * lp[i, t]) for t in range(T) if mk[i, t]) / n_i
    expected = {"sum": total, "token_mean": total / max(n_tok, 1), "seq_mean": seq}
    if wsum > 0:
        expected["weighted_mean"] = total / wsum
    tol = 1e-9 * max(1.0, 10.0**log_scale) * B * T
    for red, val in expected.items():
        loss, info = weighted_nll(lp, mask, w, red)
        assert float(loss) == pytest.approx(val, abs=tol), red
        assert int(info.num_tokens) == n_tok


@pytest.mark.parametrize("reduction", ["sum", "token_mean", "seq_mean", "weighted_mean"])
@pytest.mark.parametrize("masked", [False, True])
def test_weighted_nll_diagnostics_off_same_loss_and_gradient(reduction, masked):
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, generator=g)
    w = torch.rand(4, generator=g) + 0.1
    mask = (torch.rand(4, 6, generator=g) > 0.3) if masked else None
    outs = []
    for diag in (True, False):
        lp = base.clone().requires_grad_(True)
        loss, info = weighted_nll(lp, mask, w, reduction=reduction, diagnostics=diag)
        loss.backward()
        outs.append((loss.detach(), lp.grad, info))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2].num_tokens is not None and outs[1][2] == (None, None, None, None)


def test_logits_nan_scan_follows_the_checks_switch():
    from emrl.objectives import checks

    bad = torch.tensor([[0.0, float("nan")]])
    with pytest.raises(ValueError, match="logits_p must not contain NaN"):
        categorical_kl(bad, torch.zeros(1, 2))
    with checks(enabled=False):  # the scan is skipped (the caller vouches for the data)
        categorical_kl(bad, torch.zeros(1, 2))
