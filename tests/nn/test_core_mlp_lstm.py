"""The core interface (emrl.nn.core) with the MLP and LSTM cores."""

from __future__ import annotations

import pytest
import torch

from emrl.errors import EmrlError
from emrl.nn.build import build_core
from emrl.nn.core import cat_states, index_state


def _inputs(T=12, B=4, D=5, p_reset=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, D, generator=g)
    reset = torch.rand(T, B, generator=g) < p_reset
    reset[0] = True
    return x, reset


def test_build_core_names_and_unknown_name():
    assert build_core("mlp", 5, hidden_sizes=[8, 7]).output_size == 7
    assert build_core("lstm", 5, hidden_size=9).output_size == 9
    with pytest.raises(EmrlError, match="unknown core 'lstn'.*lstm"):
        build_core("lstn", 5)


def test_mlp_core_is_stateless_and_per_step():
    core = build_core("mlp", 5, hidden_sizes=[16])
    x, reset = _inputs()
    y, state = core(x, core.initial_state(4), reset)
    assert y.shape == (12, 4, 16) and state == ()
    y1, _ = core(x[3:4], (), reset[3:4])
    torch.testing.assert_close(y1[0], y[3])


def test_core_rejects_bad_shapes():
    core = build_core("lstm", 5, hidden_size=8)
    with pytest.raises(ValueError, match=r"\[T, B, 5\]"):
        core(torch.zeros(3, 5), core.initial_state(3), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="reset must have shape"):
        core(torch.zeros(3, 2, 5), core.initial_state(2), torch.zeros(3, 3, dtype=torch.bool))


def test_lstm_segment_equals_step_by_step_with_resets():
    torch.manual_seed(0)
    core = build_core("lstm", 5, hidden_size=8, num_layers=2)
    x, reset = _inputs()
    s0 = tuple(torch.randn_like(s) for s in core.initial_state(4))
    y_seg, s_seg = core(x, s0, reset)
    s, ys = s0, []
    for t in range(x.shape[0]):
        y, s = core(x[t:t + 1], s, reset[t:t + 1])
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys), y_seg, atol=1e-6, rtol=1e-5)
    for a, b in zip(s, s_seg, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_lstm_reset_blocks_the_past():
    torch.manual_seed(1)
    core = build_core("lstm", 5, hidden_size=8)
    x, _ = _inputs(T=10, B=2, p_reset=0.0)
    reset = torch.zeros(10, 2, dtype=torch.bool)
    reset[6, 0] = True  # env 0 starts a new episode at t=6
    y, _ = core(x, core.initial_state(2), reset)
    x2 = x.clone()
    x2[:6] += torch.randn(6, 2, 5)  # change the past of both envs
    s_rand = tuple(torch.randn_like(s) for s in core.initial_state(2))
    y2, _ = core(x2, s_rand, reset)
    torch.testing.assert_close(y2[6:, 0], y[6:, 0])  # env 0: past cannot leak
    assert (y2[6:, 1] - y[6:, 1]).abs().max() > 1e-4  # env 1: it does (no reset)


def test_state_indexing_gives_the_state_of_those_envs():
    torch.manual_seed(2)
    core = build_core("lstm", 5, hidden_size=8)
    x, reset = _inputs(B=6)
    s0 = tuple(torch.randn_like(s) for s in core.initial_state(6))
    y, _ = core(x, s0, reset)
    idx = torch.tensor([4, 1])
    y_sub, _ = core(x[:, idx], index_state(s0, idx), reset[:, idx])
    torch.testing.assert_close(y_sub, y[:, idx], atol=1e-6, rtol=1e-5)
    both = cat_states([index_state(s0, slice(0, 3)), index_state(s0, slice(3, 6))])
    for a, b in zip(both, s0, strict=True):
        assert torch.equal(a, b)
