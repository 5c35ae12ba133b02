"""Returns and advantages (spec §4 GAE, spec §5 n-step targets).

Issue 2 test bullets covered here:
- GAE equals the naive O(T²) sum; n-step targets equal a hand computation; truncation
  bootstraps and termination does not.
- Property-based tests (hypothesis) over shapes, masks and scales (GAE, n-step,
  discounted returns, group baselines, normalisation).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emrl.objectives import (
    discounted_returns,
    gae,
    group_advantages,
    normalize_advantages,
    nstep_targets,
)

torch.set_num_threads(1)


def naive_gae(r, v, nv, term, done, gamma, lam):
    """O(T²): A_t = Σ_l (γλ)^l δ_{t+l}, stopping after the first done at or after t."""
    T, B = r.shape
    out = torch.zeros(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            acc, c = 0.0, 1.0
            for j in range(t, T):
                delta = float(r[j, b]) + gamma * (1 - float(term[j, b])) * float(nv[j, b]) - float(v[j, b])
                acc += c * delta
                if done[j, b] or term[j, b]:
                    break
                c *= gamma * lam
            out[t, b] = acc
    return out


def naive_nstep(r, nv, term, done, gamma, n):
    T, B = r.shape
    out = torch.zeros(T, B, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            acc = 0.0
            for j in range(n):
                k = t + j
                acc += gamma**j * float(r[k, b])
                if j == n - 1 or done[k, b] or term[k, b] or k == T - 1:
                    acc += gamma ** (j + 1) * (1 - float(term[k, b])) * float(nv[k, b])
                    break
            out[t, b] = acc
    return out


def random_rollout(T, B, seed, p_end=0.2, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(T, B, generator=gen, dtype=torch.float64) * scale
    v = torch.randn(T, B, generator=gen, dtype=torch.float64) * scale
    nv = torch.randn(T, B, generator=gen, dtype=torch.float64) * scale
    ends = torch.rand(T, B, generator=gen) < p_end
    term = ends & (torch.rand(T, B, generator=gen) < 0.5)
    return r, v, nv, term, ends | term


def test_gae_equals_naive_sum():
    for seed in range(3):
        r, v, nv, term, done = random_rollout(12, 4, seed, p_end=0.25)
        adv, ret = gae(r, v, nv, term, done, 0.97, 0.9)
        ref = naive_gae(r, v, nv, term, done, 0.97, 0.9)
        assert torch.allclose(adv, ref, atol=1e-12)
        assert torch.allclose(ret, ref + v, atol=1e-12)


def test_gae_lambda_one_is_monte_carlo_and_lambda_zero_is_td():
    r, v, nv, term, done = random_rollout(10, 3, 7)
    adv0, _ = gae(r, v, nv, term, done, 0.9, 0.0)
    assert torch.allclose(adv0, r + 0.9 * (~term) * nv - v)
    # with consistent values (V(s_{t+1}) the same whether read as next_values[t] or
    # values[t+1] inside an episode) the λ=1 sum telescopes to the Monte-Carlo return
    v = v.clone()
    v[1:] = torch.where(done[:-1], v[1:], nv[:-1])
    adv1, _ = gae(r, v, nv, term, done, 0.9, 1.0)
    ref = naive_nstep(r, nv, term, done, 0.9, 10**6) - v
    assert torch.allclose(adv1, ref, atol=1e-12)


def test_nstep_hand_computation():
    g = 0.5
    r = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0]], dtype=torch.float64)
    nv = torch.tensor([[10.0], [20.0], [30.0], [40.0], [50.0]], dtype=torch.float64)
    v = torch.zeros_like(r)
    none = torch.zeros_like(r, dtype=torch.bool)
    # no episode end: n = 2
    got = nstep_targets(r, v, nv, none, none, g, 2)
    expected = [
        1 + 0.5 * 2 + 0.25 * 20,  # t=0: r0 + γ r1 + γ² V(s2)=nv[1]
        2 + 0.5 * 3 + 0.25 * 30,
        3 + 0.5 * 4 + 0.25 * 40,
        4 + 0.5 * 5 + 0.25 * 50,
        5 + 0.5 * 50,  # last step of the window: 1-step, bootstrap from nv[4]
    ]
    assert got.flatten().tolist() == pytest.approx(expected)
    # termination after step 1 (s2 terminal): no bootstrap there, sums stop there
    term = none.clone()
    term[1] = True
    got = nstep_targets(r, v, nv, term, term, g, 3)
    expected = [
        1 + 0.5 * 2,  # stops at terminal, nothing bootstrapped
        2.0,
        3 + 0.5 * 4 + 0.25 * 5 + 0.125 * 50,  # window ends at t=4
        4 + 0.5 * 5 + 0.25 * 50,
        5 + 0.5 * 50,
    ]
    assert got.flatten().tolist() == pytest.approx(expected)
    # truncation after step 1: sums stop there but bootstrap from nv[1]
    got = nstep_targets(r, v, nv, none, term, g, 3)
    expected[0] = 1 + 0.5 * 2 + 0.25 * 20
    expected[1] = 2 + 0.5 * 20
    assert got.flatten().tolist() == pytest.approx(expected)


def test_nstep_equals_naive_reference_and_n1_is_td0():
    for seed, n in [(0, 1), (1, 3), (2, 5), (3, 40)]:
        r, v, nv, term, done = random_rollout(15, 3, seed)
        got = nstep_targets(r, v, nv, term, done, 0.95, n)
        assert torch.allclose(got, naive_nstep(r, nv, term, done, 0.95, n), atol=1e-12)
    r, v, nv, term, done = random_rollout(8, 2, 9)
    assert torch.allclose(nstep_targets(r, v, nv, term, done, 0.9, 1), r + 0.9 * (~term) * nv)


def test_truncation_bootstraps_and_termination_does_not():
    r = torch.tensor([[1.0], [1.0], [1.0]])
    v = torch.zeros(3, 1)
    nv = torch.full((3, 1), 100.0)
    done = torch.tensor([[False], [True], [False]])
    truncated_only = torch.zeros(3, 1, dtype=torch.bool)
    adv_trunc, _ = gae(r, v, nv, truncated_only, done, 0.9, 1.0)
    adv_term, _ = gae(r, v, nv, done, done, 0.9, 1.0)
    # step 1 ends the episode; truncated: δ_1 = 1 + 0.9*100; terminated: δ_1 = 1
    assert float(adv_trunc[1]) == pytest.approx(1 + 90.0)
    assert float(adv_term[1]) == pytest.approx(1.0)
    # step 0 accumulates into step 1 either way but not into step 2
    assert float(adv_trunc[0]) == pytest.approx(91 + 0.9 * 91)
    assert float(adv_term[0]) == pytest.approx(91 + 0.9 * 1)
    assert float(adv_trunc[2]) == float(adv_term[2]) == pytest.approx(91.0)
    n_trunc = nstep_targets(r, v, nv, truncated_only, done, 0.9, 5)
    n_term = nstep_targets(r, v, nv, done, done, 0.9, 5)
    assert float(n_trunc[1]) == pytest.approx(91.0)
    assert float(n_term[1]) == pytest.approx(1.0)


def test_discounted_returns():
    r = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    dones = torch.tensor([[0, 1], [0, 0], [0, 0]])
    ret = discounted_returns(r, dones, 0.5, bootstrap=torch.tensor([8.0, 0.0]))
    assert ret[:, 0].tolist() == pytest.approx([1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 8, 2 + 1.5 + 2, 3 + 4])
    assert ret[:, 1].tolist() == pytest.approx([1.0, 2 + 1.5, 3.0])


def test_group_advantages_mean_and_loo():
    r = torch.tensor([1.0, 2.0, 6.0, 5.0, 5.0, 5.0])
    assert group_advantages(r, 3).tolist() == pytest.approx([-2, -1, 3, 0, 0, 0])
    # leave-one-out: r_i - mean of the others
    assert group_advantages(r, 3, "loo").tolist() == pytest.approx([1 - 4, 2 - 3.5, 6 - 1.5, 0, 0, 0])
    norm = group_advantages(r, 3, "mean", normalize=True)
    assert norm[:3].tolist() == pytest.approx((torch.tensor([-2.0, -1, 3]) / torch.tensor([1.0, 2, 6]).std()).tolist())
    assert norm[3:].tolist() == [0.0, 0.0, 0.0]  # all-equal group: zeros, not NaN
    assert group_advantages(torch.tensor([3.0, 4.0]), 1, normalize=True).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(r, 1, "loo")
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(r, 4)


def test_normalize_advantages_with_mask():
    a = torch.tensor([1.0, 2.0, 3.0, 100.0])
    m = torch.tensor([True, True, True, False])
    out = normalize_advantages(a, m)
    assert out.tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    assert normalize_advantages(torch.tensor([5.0])).tolist() == [0.0]
    assert normalize_advantages(torch.full((4,), 7.0)).tolist() == [0.0] * 4


@settings(max_examples=40, deadline=None)
@given(
    T=st.integers(1, 12),
    B=st.integers(1, 4),
    n=st.integers(1, 14),
    gamma=st.floats(0.0, 1.0),
    lam=st.floats(0.0, 1.0),
    p_end=st.floats(0.0, 1.0),
    log_scale=st.floats(-3, 6),
    seed=st.integers(0, 2**16),
)
def test_property_gae_and_nstep_match_references(T, B, n, gamma, lam, p_end, log_scale, seed):
    r, v, nv, term, done = random_rollout(T, B, seed, p_end, 10.0**log_scale)
    adv, _ = gae(r, v, nv, term, done, gamma, lam)
    tol = 1e-9 * 10.0**log_scale * T
    assert torch.allclose(adv, naive_gae(r, v, nv, term, done, gamma, lam), atol=tol, rtol=1e-9)
    tgt = nstep_targets(r, v, nv, term, done, gamma, n)
    assert torch.allclose(tgt, naive_nstep(r, nv, term, done, gamma, n), atol=tol, rtol=1e-9)
    # flags given as 0/1 floats give the same answer as bool flags
    adv_f, _ = gae(r, v, nv, term.double(), done.double(), gamma, lam)
    assert torch.equal(adv, adv_f)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 6),
    k=st.integers(2, 6),
    log_scale=st.floats(-3, 6),
    seed=st.integers(0, 2**16),
    ties=st.booleans(),
)
def test_property_group_advantages(groups, k, log_scale, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(groups * k, generator=gen, dtype=torch.float64) * 10.0**log_scale
    if ties:
        r = torch.round(r / 10.0**log_scale)
    for mode in ["mean", "loo"]:
        for normalize in [False, True]:
            a = group_advantages(r, k, mode, normalize)
            assert bool(torch.isfinite(a).all())
            # every group's advantages sum to zero
            assert torch.allclose(a.view(groups, k).sum(1), torch.zeros(groups, dtype=a.dtype), atol=1e-9 * max(1.0, 10.0**log_scale) * k)
    loo = group_advantages(r, k, "loo")
    rg = r.view(groups, k)
    ref = rg - (rg.sum(1, keepdim=True) - rg) / (k - 1)
    assert torch.allclose(loo, ref.flatten(), rtol=1e-9, atol=1e-9 * 10.0**log_scale)
    assert not math.isnan(float(loo.sum()))
