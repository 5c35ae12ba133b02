"""DAR (spec §7) and AWR (spec §7 "Advantage Weighted Regression") weights.

Issue 2 test bullets covered here:
- DAR weights converge to V-MPO weights as α→0 and when π_ref = π_t, with η = α + β
  (spec §7 "Mapping DAR to V-MPO").
- AWR at a fixed temperature with max-weight clipping; DAR weight clipping and advantage
  normalisation against hand computations.
- Property-based tests (hypothesis) over shapes, masks and scales.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emrl.objectives import awr_weights, dar_weights, normalize_advantages, vmpo_weights

torch.set_num_threads(1)


def batch(n=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logp_ref = -20 + 5 * torch.randn(n, generator=gen, dtype=torch.float64)
    logp_t = logp_ref + torch.randn(n, generator=gen, dtype=torch.float64)
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    return logp_ref, logp_t, adv


def test_dar_equals_vmpo_when_ref_equals_sampling_policy():
    _, logp_t, adv = batch()
    for alpha, beta in [(0.3, 0.7), (2.0, 0.5), (1e-3, 4.0), (5.0, 0.0)]:
        eta = alpha + beta
        w_vmpo, _ = vmpo_weights(adv, eta, top_fraction=1.0)
        w_dar, info = dar_weights(logp_t, logp_t, adv, alpha, beta)
        assert torch.allclose(w_dar, w_vmpo, atol=1e-12)
        assert info.t == eta
        # the target form equals the spec's V-MPO weight ∝ π_t exp(A/η)
        w_tgt, _ = dar_weights(logp_t, logp_t, adv, alpha, beta, form="target")
        assert torch.allclose(w_tgt, torch.softmax(logp_t + adv / eta, 0), atol=1e-12)


def test_dar_converges_to_vmpo_as_alpha_to_zero():
    logp_ref, logp_t, adv = batch(seed=1)
    t = 0.8
    w_vmpo, _ = vmpo_weights(adv, t, top_fraction=1.0)
    w_vmpo_target = torch.softmax(logp_t + adv / t, 0)
    errs, errs_target = [], []
    for alpha in [0.4, 1e-1, 1e-2, 1e-4, 1e-6]:
        w, _ = dar_weights(logp_ref, logp_t, adv, alpha, t - alpha)
        errs.append(float((w - w_vmpo).abs().max()))
        w2, _ = dar_weights(logp_ref, logp_t, adv, alpha, t - alpha, form="target")
        errs_target.append(float((w2 - w_vmpo_target).abs().max()))
    assert errs[0] > 1e-2  # genuinely different away from the limit
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False))
    assert errs[-1] < 1e-5
    assert all(b < a for a, b in zip(errs_target, errs_target[1:], strict=False))
    assert errs_target[-1] < 1e-5
    # exactly α = 0 is the limit itself
    w0, _ = dar_weights(logp_ref, logp_t, adv, 0.0, t)
    assert torch.allclose(w0, w_vmpo, atol=1e-12)


def test_dar_hand_computation_both_forms():
    logp_ref = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64)
    logp_t = torch.tensor([-1.5, -1.0, -0.7], dtype=torch.float64)
    adv = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    a, b = 0.5, 1.5
    t = a + b
    imp = [
        (math.exp(lr) / math.exp(lt)) ** (a / t) * math.exp(x / t)
        for lr, lt, x in zip(logp_ref.tolist(), logp_t.tolist(), adv.tolist(), strict=True)
    ]
    tgt = [
        math.exp(lr) ** (a / t) * math.exp(lt) ** (b / t) * math.exp(x / t)
        for lr, lt, x in zip(logp_ref.tolist(), logp_t.tolist(), adv.tolist(), strict=True)
    ]
    w, info = dar_weights(logp_ref, logp_t, adv, a, b, self_normalize=False)
    assert w.tolist() == pytest.approx(imp, rel=1e-12)
    assert torch.allclose(info.log_ref_term + info.log_sample_term + info.adv_term, torch.log(w))
    w, _ = dar_weights(logp_ref, logp_t, adv, a, b)
    assert w.tolist() == pytest.approx([x / sum(imp) for x in imp], rel=1e-12)
    w, _ = dar_weights(logp_ref, logp_t, adv, a, b, form="target")
    assert w.tolist() == pytest.approx([x / sum(tgt) for x in tgt], rel=1e-12)


def test_dar_clipping_normalisation_and_mask():
    logp_ref, logp_t, adv = batch(8, seed=2)
    adv = adv * 5
    mask = torch.tensor([True] * 6 + [False] * 2)
    w, info = dar_weights(logp_ref, logp_t, adv, 0.5, 0.5, clip_max=2.0, mask=mask, self_normalize=False)
    assert bool((w <= 2.0 + 1e-12).all()) and w[6:].tolist() == [0.0, 0.0]
    raw = torch.exp(0.5 * (logp_ref - logp_t) + adv)[:6]
    assert torch.allclose(w[:6], raw.clamp(max=2.0))
    assert float(info.clipped_fraction) == pytest.approx(float((raw >= 2.0).double().mean()))
    wn, _ = dar_weights(logp_ref, logp_t, adv, 0.5, 0.5, clip_max=2.0, mask=mask)
    assert torch.allclose(wn, w / w.sum())
    # advantage normalisation standardises A over valid samples before the exponent
    wz, info = dar_weights(logp_t, logp_t, adv, 0.2, 0.3, normalize_advantages=True, mask=mask)
    z = normalize_advantages(adv, mask)
    assert torch.allclose(info.adv_term[:6], z[:6] / 0.5)
    assert torch.allclose(wz[:6], torch.softmax(z[:6] / 0.5, 0))


def test_awr_weights_hand_computation_and_clipping():
    adv = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    w, info = awr_weights(adv, 1.0, normalize=False)
    assert w.tolist() == pytest.approx([1, math.e, math.e**2, math.e**3])
    w, info = awr_weights(adv, 0.5, max_weight=20.0, normalize=False)
    assert w.tolist() == pytest.approx([1, math.e**2, 20.0, 20.0])
    assert float(info.clipped_fraction) == 0.5
    wn, info = awr_weights(adv, 0.5, max_weight=20.0)
    raw = torch.tensor([1, math.e**2, 20.0, 20.0], dtype=torch.float64)
    assert torch.allclose(wn, raw / raw.sum())
    assert float(info.ess) == pytest.approx(float(1 / (wn**2).sum()))
    # masked samples get zero; all samples (no top-k) are used otherwise
    wm, _ = awr_weights(adv, 1.0, mask=torch.tensor([True, False, True, True]))
    assert wm[1] == 0 and bool((wm[[0, 2, 3]] > 0).all())


def test_awr_huge_advantages_do_not_overflow_when_normalised_and_raise_otherwise():
    adv = torch.tensor([1e6, -1e6, 0.0])
    w, _ = awr_weights(adv, 1e-3)
    assert w.tolist() == [1.0, 0.0, 0.0]
    w, _ = awr_weights(adv, 1e-3, max_weight=10.0, normalize=False)
    assert w.tolist() == pytest.approx([10.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="overflow"):
        awr_weights(adv, 1e-3, normalize=False)


@settings(max_examples=50, deadline=None)
@given(
    n=st.integers(1, 30),
    alpha=st.floats(0.0, 5.0),
    beta=st.floats(0.01, 5.0),
    log_scale=st.floats(-2, 6),
    seed=st.integers(0, 2**16),
    use_mask=st.booleans(),
    clip=st.one_of(st.none(), st.floats(0.5, 100.0)),
)
def test_property_dar_weights(n, alpha, beta, log_scale, seed, use_mask, clip):
    gen = torch.Generator().manual_seed(seed)
    logp_ref = -50 * torch.rand(n, generator=gen)
    logp_t = -50 * torch.rand(n, generator=gen)
    adv = torch.randn(n, generator=gen) * 10.0**log_scale
    mask = None
    if use_mask:
        mask = torch.rand(n, generator=gen) < 0.6
        mask[0] = True
    w, info = dar_weights(logp_ref, logp_t, adv, alpha, beta, clip_max=clip, mask=mask)
    assert bool(torch.isfinite(w).all()) and bool((w >= 0).all())
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-5)
    if mask is not None:
        assert bool((w[~mask] == 0).all())
    # with π_ref = π_t and no clipping it is V-MPO at η = α + β, ρ = 1
    w1, _ = dar_weights(logp_t, logp_t, adv, alpha, beta, mask=mask)
    w2, _ = vmpo_weights(adv, alpha + beta, 1.0, mask)
    assert torch.allclose(w1, w2, atol=1e-6)
