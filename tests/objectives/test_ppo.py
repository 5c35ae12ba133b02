"""PPO losses (spec §4): clipped surrogate (token / sequence), value loss, entropy, KL.

Issue 2 items covered here: the clipped surrogate with token-level and sequence-level
ratios, value loss (optionally clipped), entropy and approximate KL, each against a
hand computation or torch.distributions; gradients vanish exactly where clipping says.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Categorical

from emrl.objectives import approx_kl, entropy_from_logits, ppo_clip_loss, value_loss

torch.set_num_threads(1)


def test_token_level_clip_loss_hand_computation_and_gradients():
    logp_old = torch.zeros(1, 4, dtype=torch.float64)
    log_r = torch.tensor([[math.log(1.5), math.log(1.5), math.log(0.5), math.log(1.1)]], dtype=torch.float64)
    logp_new = (logp_old + log_r).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, -2.0, 3.0]], dtype=torch.float64)
    loss, info = ppo_clip_loss(logp_new, logp_old, adv, clip_eps=0.2)
    # min(rA, clip(r)A): 1.2*1, 1.5*-1, 0.8*-2, 1.1*3
    assert float(loss.detach()) == pytest.approx(-(1.2 - 1.5 - 1.6 + 3.3) / 4)
    (g,) = torch.autograd.grad(loss, logp_new)
    # d/dlogp (r A) = r A, zero where the clipped branch is active
    assert g.flatten().tolist() == pytest.approx([0.0, 1.5 / 4, 0.0, -3.3 / 4])
    assert float(info.clip_fraction) == pytest.approx(0.75)
    r = torch.tensor([1.5, 1.5, 0.5, 1.1], dtype=torch.float64)
    assert float(info.ratio_mean) == pytest.approx(float(r.mean()))
    assert float(info.approx_kl) == pytest.approx(float(((r - 1) - r.log()).mean()))
    assert float(info.approx_kl_k1) == pytest.approx(float(-r.log().mean()))


def test_per_sequence_advantages_broadcast_and_mask():
    gen = torch.Generator().manual_seed(0)
    new = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.1
    old = torch.randn(3, 5, generator=gen, dtype=torch.float64) * 0.1
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    loss, _ = ppo_clip_loss(new, old, adv, mask, 0.1)
    r = torch.exp(new - old)
    A = adv[:, None].expand(3, 5)
    surr = torch.minimum(r * A, r.clamp(0.9, 1.1) * A)
    assert float(loss.detach()) == pytest.approx(-float(surr[mask].mean()))


def test_sequence_level_ratio():
    new = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.1, -2.1, 0.0], [-0.5, -0.4, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([2.0, 1.0], dtype=torch.float64)
    loss, info = ppo_clip_loss(new, old, adv, mask, 0.2, level="sequence")
    r1, r2 = math.exp(0.2), math.exp(-0.1)  # masked token ignored
    expect = -(min(r1 * 2, 1.2 * 2) + min(r2 * 1, max(0.8, r2) * 1)) / 2
    assert float(loss.detach()) == pytest.approx(expect)
    assert float(info.clip_fraction) == pytest.approx(0.5)
    (g,) = torch.autograd.grad(loss, new)
    assert g[0].tolist() == [0.0, 0.0, 0.0]  # clipped sequence: no gradient
    assert g[1].tolist() == pytest.approx([-r2 / 2] * 3)
    # far off-policy sequences do not overflow
    big = torch.full((2, 3), 500.0, dtype=torch.float64)
    loss, _ = ppo_clip_loss(big, old, -adv, None, 0.2, level="sequence")
    assert math.isfinite(float(loss.detach()))


def test_value_loss_plain_and_clipped():
    v = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    old = torch.tensor([1.5, 1.0, 3.0])
    ret = torch.tensor([0.0, 3.0, 3.5])
    loss, info = value_loss(v, None, ret)
    assert float(loss.detach()) == pytest.approx(0.5 * (1 + 1 + 0.25) / 3)
    loss, info = value_loss(v, old, ret, clip=0.2)
    vc = torch.tensor([1.3, 1.2, 3.0])
    err = torch.maximum((v.detach() - ret) ** 2, (vc - ret) ** 2)
    assert float(loss.detach()) == pytest.approx(0.5 * float(err.mean()))
    assert float(info.clip_fraction) == pytest.approx(2 / 3)
    loss, info = value_loss(ret.clone(), None, ret)
    assert float(info.explained_variance) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="old_values"):
        value_loss(v, None, ret, clip=0.2)


def test_entropy_matches_torch_distributions_and_chunking():
    logits = torch.randn(3, 4, 10, dtype=torch.float64)
    ref = Categorical(logits=logits).entropy()
    assert torch.allclose(entropy_from_logits(logits), ref)
    assert torch.allclose(entropy_from_logits(logits, chunk_size=5), ref)
    mask = torch.rand(3, 4) < 0.5
    assert torch.allclose(entropy_from_logits(logits, mask), torch.where(mask, ref, 0.0))
    lg = logits.clone()
    lg[..., :3] = -math.inf
    assert torch.allclose(entropy_from_logits(lg), Categorical(logits=lg).entropy())


def test_approx_kl_estimators():
    new = torch.log(torch.tensor([0.5, 0.25, 2.0]))
    old = torch.zeros(3)
    r = torch.tensor([0.5, 0.25, 2.0])
    assert float(approx_kl(new, old, estimator="k1")) == pytest.approx(float(-r.log().mean()))
    assert float(approx_kl(new, old)) == pytest.approx(float((r - 1 - r.log()).mean()))


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(1, 5),
    T=st.integers(1, 8),
    eps=st.floats(0.01, 0.5),
    log_scale=st.floats(-3, 1),
    adv_scale=st.floats(-3, 6),
    seed=st.integers(0, 2**16),
)
def test_property_clip_loss_bounds(B, T, eps, log_scale, adv_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    new = torch.randn(B, T, generator=gen, dtype=torch.float64) * 10.0**log_scale
    old = torch.randn(B, T, generator=gen, dtype=torch.float64) * 10.0**log_scale
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64) * 10.0**adv_scale
    mask = torch.rand(B, T, generator=gen) < 0.7
    for level, a in [("token", adv), ("sequence", adv[:, 0])]:
        loss, info = ppo_clip_loss(new, old, a, mask, eps, level=level)
        assert math.isfinite(float(loss.detach()))
        assert 0.0 <= float(info.clip_fraction) <= 1.0
        assert float(info.approx_kl) >= 0.0
    # the clipped objective is a pessimistic bound on the unclipped one
    loss, _ = ppo_clip_loss(new, old, adv, mask, eps)
    # (log-ratios are clamped to ±max_log_ratio = 20 before exp: the bound holds for those r)
    r = torch.exp((new - old).clamp(-20.0, 20.0))
    unclipped = -(r * adv)[mask].mean() if bool(mask.any()) else torch.tensor(0.0)
    assert float(loss.detach()) >= float(unclipped) - 1e-9 * (1 + abs(float(unclipped)))
    # at r = 1 the loss is -mean(A) and nothing is clipped
    loss, info = ppo_clip_loss(old, old, adv, mask, eps)
    if bool(mask.any()):
        assert float(loss.detach()) == pytest.approx(-float(adv[mask].mean()), abs=1e-9 * 10.0**adv_scale)
    assert float(info.clip_fraction) == 0.0


def test_sequence_level_equals_token_level_for_one_token_sequences():
    gen = torch.Generator().manual_seed(5)
    new = torch.randn(6, 1, generator=gen, dtype=torch.float64) * 0.3
    old = torch.randn(6, 1, generator=gen, dtype=torch.float64) * 0.3
    adv = torch.randn(6, generator=gen, dtype=torch.float64)
    seq, si = ppo_clip_loss(new, old, adv, None, 0.2, level="sequence")
    tok, ti = ppo_clip_loss(new, old, adv, None, 0.2, level="token")
    flat, fi = ppo_clip_loss(new[:, 0], old[:, 0], adv, None, 0.2)  # control: [N]
    assert float(seq) == pytest.approx(float(tok)) == pytest.approx(float(flat))
    assert float(si.clip_fraction) == float(ti.clip_fraction) == float(fi.clip_fraction)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("masked", [False, True])
def test_clip_loss_diagnostics_off_same_loss_and_gradients(level, masked):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(4, 6, generator=gen) * 0.3
    old = torch.randn(4, 6, generator=gen) * 0.3
    adv = torch.randn(4, generator=gen) if level == "sequence" else torch.randn(4, 6, generator=gen)
    mask = (torch.rand(4, 6, generator=gen) > 0.3) if masked else None
    out = []
    for diag in (True, False):
        new = base.clone().requires_grad_()
        loss, info = ppo_clip_loss(new, old, adv, mask, 0.1, level=level, diagnostics=diag)
        (g,) = torch.autograd.grad(loss, new)
        out.append((loss.detach(), g, info))
    (l_on, g_on, i_on), (l_off, g_off, i_off) = out
    assert torch.equal(l_on, l_off) and torch.equal(g_on, g_off)  # bit-for-bit
    assert all(v is not None for v in i_on) and all(v is None for v in i_off)
    assert float(i_on.clip_fraction) > 0  # the diagnostics-on call did compute them


@pytest.mark.parametrize("clip", [None, 0.05])
@pytest.mark.parametrize(("n", "masked"), [(32, True), (32, False), (4099, False)])
def test_value_loss_diagnostics_off_same_loss_and_gradients(clip, n, masked):
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(n, generator=gen)
    old = base + 0.2 * torch.randn(n, generator=gen)
    ret = torch.randn(n, generator=gen)
    mask = (torch.rand(n, generator=gen) > 0.25) if masked else None
    out = []
    for diag in (True, False):
        v = base.clone().requires_grad_()
        loss, info = value_loss(v, old, ret, clip=clip, mask=mask, diagnostics=diag)
        (g,) = torch.autograd.grad(loss, v)
        out.append((loss.detach(), g, info))
    (l_on, g_on, i_on), (l_off, g_off, i_off) = out
    assert torch.equal(l_on, l_off) and torch.equal(g_on, g_off)
    assert i_off.clip_fraction is None and i_off.explained_variance is None
    assert i_on.explained_variance is not None and i_on.clip_fraction is not None
    if clip is not None:
        assert float(i_on.clip_fraction) > 0
