"""TrXL / TrXL-I / GTrXL cores (spec §8): attention, masks, gates, memory, actor/update equality."""

from __future__ import annotations

import math

import pytest
import torch

from emrl.errors import ConfigError, EmrlError
from emrl.nn import build as core_mod
from emrl.nn.core import index_state
from emrl.nn.gates import GATE_NAMES, GRUGate, build_gate
from emrl.nn.trxl import (
    RelativeMultiHeadAttention,
    TransformerXLCore,
    build_trxl_core,
    sinusoid_encoding,
)

VARIANTS = [("trxl", "gru"), ("trxl-i", "gru")] + [("gtrxl", g) for g in GATE_NAMES]


def small_core(
    name="gtrxl", gate="gru", memory_length=5, input_size=3, seed=0, **kw
) -> TransformerXLCore:
    torch.manual_seed(seed)
    c = core_mod.build_core(
        name,
        input_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        memory_length=memory_length,
        gate=gate,
        **kw,
    )
    # Non-zero u, v biases so that the test exercises every term of the score.
    for p in c.parameters():
        if p.dim() == 2 and p.shape == (2, 8):
            torch.nn.init.normal_(p, std=0.5)
    return c.eval()


def run_stepwise(c, x, state, reset):
    ys = []
    for t in range(x.shape[0]):
        y, state = c(x[t : t + 1], state, reset[t : t + 1])
        ys.append(y)
    return torch.cat(ys), state


# --- relative attention ---------------------------------------------------------------


def test_relative_attention_equals_direct_computation_on_concatenated_sequence():
    torch.manual_seed(1)
    B, M, T, d, H, dh = 2, 4, 3, 8, 2, 5
    attn = RelativeMultiHeadAttention(d, H, dh)
    torch.nn.init.normal_(attn.u)
    torch.nn.init.normal_(attn.v)
    mem, h = torch.randn(B, M, d), torch.randn(B, T, d)
    K = M + T
    dist = (torch.arange(T)[:, None] + M) - torch.arange(K)[None, :]
    mask = ((dist >= 0) & (dist <= M)).expand(B, T, K).clone()
    mask[1, 2, 4] = False  # an arbitrary extra masked pair
    out = attn(h, mem, mask, sinusoid_encoding(torch.arange(K), d), dist.clamp(0, K - 1))

    # Direct: score(i, j) = (q_i + u)·k_j + (q_i + v)·W_R R_{i-j} on the sequence [mem; h].
    seq = torch.cat([mem, h], dim=1)
    Wq, Wkv, Wr, Wo = attn.q.weight, attn.kv.weight, attn.r.weight, attn.out.weight
    expected = torch.zeros(B, T, d)
    for b in range(B):
        for i in range(T):
            heads = []
            for n in range(H):
                sl = slice(n * dh, (n + 1) * dh)
                q = Wq[sl] @ seq[b, M + i]
                scores, values = [], []
                for j in range(K):
                    if not mask[b, i, j]:
                        continue
                    k = Wkv[sl] @ seq[b, j]
                    v = Wkv[H * dh + n * dh : H * dh + (n + 1) * dh] @ seq[b, j]
                    R = sinusoid_encoding(torch.tensor([M + i - j]), d)[0]
                    r = Wr[sl] @ R
                    scores.append(((q + attn.u[n]) @ k + (q + attn.v[n]) @ r) / math.sqrt(dh))
                    values.append(v)
                w = torch.softmax(torch.stack(scores), dim=0)
                heads.append((w[:, None] * torch.stack(values)).sum(0))
            expected[b, i] = Wo @ torch.cat(heads)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,gate", VARIANTS[:3])
def test_segments_with_memory_equal_one_pass_over_the_concatenation(name, gate):
    c = small_core(name, gate, memory_length=4)
    B = 3
    x = torch.randn(11, B, 3)
    reset = torch.zeros(11, B, dtype=torch.bool)
    reset[0] = True
    y_all, s_all = c(x, c.initial_state(B), reset)
    y1, s = c(x[:6], c.initial_state(B), reset[:6])
    y2, s = c(x[6:], s, reset[6:])
    torch.testing.assert_close(torch.cat([y1, y2]), y_all, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s[0], s_all[0])
    # Memory matters: segment 2 from a fresh state gives different outputs.
    y2_fresh, _ = c(x[6:], c.initial_state(B), reset[6:])
    assert (y2_fresh - y2).abs().max() > 1e-3


# --- masks -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,gate", VARIANTS[:3])
def test_mask_blocks_the_future(name, gate):
    c = small_core(name, gate, memory_length=8)
    x = torch.randn(7, 2, 3)
    reset = torch.zeros(7, 2, dtype=torch.bool)
    y, _ = c(x, c.initial_state(2), reset)
    x2 = x.clone()
    x2[4:] += 3.0 * torch.randn_like(x2[4:])
    y2, _ = c(x2, c.initial_state(2), reset)
    torch.testing.assert_close(y2[:4], y[:4])
    assert (y2[4:] - y[4:]).abs().max() > 1e-3


@pytest.mark.parametrize("name,gate", VARIANTS[:3])
def test_mask_blocks_attention_across_an_episode_reset(name, gate):
    c = small_core(name, gate, memory_length=8)
    T, B = 9, 2
    x = torch.randn(T, B, 3)
    reset = torch.zeros(T, B, dtype=torch.bool)
    reset[5, 0] = True  # env 0 starts a new episode at step 5; env 1 does not
    y, _ = c(x, c.initial_state(B), reset)
    x2 = x.clone()
    x2[:5] += 3.0 * torch.randn_like(x2[:5])  # change everything before step 5
    y2, _ = c(x2, c.initial_state(B), reset)
    torch.testing.assert_close(y2[5:, 0], y[5:, 0])  # env 0 after its reset: unaffected
    assert (y2[5:, 1] - y[5:, 1]).abs().max() > 1e-3  # env 1 still remembers
    assert (y2[:5, 0] - y[:5, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("name,gate", VARIANTS[:3])
def test_memory_resets_between_episodes(name, gate):
    c = small_core(name, gate, memory_length=6)
    B = 2
    x1, x2 = torch.randn(10, B, 3), torch.randn(7, B, 3)
    no_reset1 = torch.zeros(10, B, dtype=torch.bool)
    _, state = c(x1, c.initial_state(B), no_reset1)  # episode 1 fills the memory
    assert state[1].sum() == B * 6
    reset2 = torch.zeros(7, B, dtype=torch.bool)
    reset2[0] = True  # episode 2 starts at the first step of the next segment
    y_after, s_after = c(x2, state, reset2)
    y_fresh, s_fresh = c(x2, c.initial_state(B), reset2)
    torch.testing.assert_close(y_after, y_fresh)
    torch.testing.assert_close(s_after[1], s_fresh[1])
    torch.testing.assert_close(s_after[0][:, :, -6:], s_fresh[0][:, :, -6:])
    # Same segment without the reset: the old episode's memory is used.
    y_cont, _ = c(x2, state, torch.zeros(7, B, dtype=torch.bool))
    assert (y_cont - y_fresh).abs().max() > 1e-3
    # The validity mask of a reset in the middle of a T=1 rollout.
    _, s = c(x1[:1], state, torch.tensor([[True, False]]))
    assert s[1][0].tolist() == [0, 0, 0, 0, 0, 1] and s[1][1].sum() == 6


# --- actor (T = 1) vs update (one pass over the segment) ------------------------------------


@pytest.mark.parametrize("name,gate", VARIANTS)
def test_stepping_one_step_at_a_time_equals_one_pass_over_the_segment(name, gate):
    c = small_core(name, gate, memory_length=4)
    B, T = 4, 6
    g = torch.Generator().manual_seed(3)
    state = c.initial_state(B)
    for _segment in range(3):
        x = torch.randn(T, B, 3, generator=g)
        reset = torch.rand(T, B, generator=g) < 0.2
        stored = state  # what rollout storage keeps for this segment
        with torch.inference_mode():  # as the actor collects
            y_actor, state = run_stepwise(c, x, state, reset)
        y_update, s_update = c(x, stored, reset)
        y_update.sum().backward()  # the stored (inference-mode) state works in the update
        torch.testing.assert_close(y_update, y_actor, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_update[0], state[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_update[1], state[1])
        # A minibatch over environments: index the stored state.
        idx = torch.tensor([2, 0])
        y_mb, _ = c(x[:, idx], index_state(stored, idx), reset[:, idx])
        torch.testing.assert_close(y_mb, y_actor[:, idx], atol=1e-5, rtol=1e-5)


def test_no_gradient_flows_into_the_memory():
    c = small_core("gtrxl")
    c.train()
    x1 = torch.randn(4, 2, 3, requires_grad=True)
    x2 = torch.randn(4, 2, 3, requires_grad=True)
    no = torch.zeros(4, 2, dtype=torch.bool)
    _, s = c(x1, c.initial_state(2), no)
    assert not any(t.requires_grad for t in s)
    y2, _ = c(x2, s, no)
    y2.sum().backward()
    assert x1.grad is None and x2.grad is not None and x2.grad.abs().sum() > 0


# --- gates ------------------------------------------------------------------------------


def test_gru_gate_is_spec_formula_and_near_identity_at_init():
    torch.manual_seed(0)
    d = 64
    gate = GRUGate(d, gate_bias=2.0)
    x, y = torch.randn(256, d), torch.randn(256, d)
    # Spec §8 written out with the gate's matrices.
    Wr, Wz = gate.w_rz.weight.split(d)
    Ur, Uz = gate.u_rz.weight.split(d)
    r = torch.sigmoid(y @ Wr.T + x @ Ur.T)
    z = torch.sigmoid(y @ Wz.T + x @ Uz.T - 2.0)
    h = torch.tanh(y @ gate.w_g.weight.T + (r * x) @ gate.u_g.weight.T)
    torch.testing.assert_close(gate(x, y), (1 - z) * x + z * h)
    # b_g = 2: z is small, so g(x, y) stays close to the residual stream x.
    assert z.mean() < 0.2
    rel_change = ((gate(x, y) - x).norm() / x.norm()).item()
    torch.manual_seed(0)
    open_gate = GRUGate(d, gate_bias=0.0)
    rel_change_open = ((open_gate(x, y) - x).norm() / x.norm()).item()
    assert rel_change < 0.25 and rel_change < 0.5 * rel_change_open


def test_gtrxl_block_with_gru_gates_passes_the_stream_nearly_unchanged_at_init():
    c = small_core("gtrxl", "gru", memory_length=4)
    x = torch.randn(5, 3, 3)
    no = torch.zeros(5, 3, dtype=torch.bool)
    emb = c.embed(x)
    y, _ = c(x, c.initial_state(3), no)
    assert ((y - emb).norm() / emb.norm()).item() < 0.5


@pytest.mark.parametrize("name", ["input", "output", "highway", "sigmoid-tanh", "residual"])
def test_other_gates_follow_their_formulas(name):
    torch.manual_seed(0)
    d = 8
    gate = build_gate(name, d, gate_bias=2.0)
    x, y = torch.randn(5, d), torch.randn(5, d)
    sig = torch.sigmoid
    if name == "input":
        expected = sig(gate.w(x)) * x + y
    elif name == "output":
        expected = x + sig(x @ gate.w.weight.T - 2.0) * y
    elif name == "highway":
        c = sig(x @ gate.w.weight.T + 2.0)
        expected = c * x + (1 - c) * y
    elif name == "sigmoid-tanh":
        expected = x + sig(y @ gate.w.weight.T - 2.0) * torch.tanh(y @ gate.u.weight.T)
    else:
        expected = x + y
    torch.testing.assert_close(gate(x, y), expected)


# --- building ------------------------------------------------------------------------------


def test_spec_section_8_configuration_builds():
    c = build_trxl_core(
        "gtrxl", 300, d_model=256, n_layers=8, n_heads=4, d_head=32, d_mlp=512, memory_length=63
    )
    assert c.output_size == 256
    assert c.blocks[0].attn.q.out_features == 4 * 32
    y, s = c(torch.randn(2, 1, 300), c.initial_state(1), torch.zeros(2, 1, dtype=torch.bool))
    assert y.shape == (2, 1, 256) and s[0].shape == (1, 8, 63, 256)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"memory_length": 0}, "memory_length"),
        ({"memory_length": -3}, "memory_length"),
        ({"unroll_length": 0}, "unroll_length"),
        ({"d_model": 30, "n_heads": 4}, "n_heads=4 must divide d_model=30"),
        ({"d_head": 0}, "d_head"),
        ({"n_heads": 0}, "n_heads"),
        ({"gate": "gru2"}, "unknown gate 'gru2'"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_bad_configuration_is_a_clear_error(kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        build_trxl_core("gtrxl", 4, **kwargs)


def test_unknown_gate_suggests_close_names_and_unknown_core_is_an_error():
    with pytest.raises(ConfigError, match="Did you mean: highway"):
        build_trxl_core("gtrxl", 4, gate="highwy")
    with pytest.raises(EmrlError, match="gtrxl"):
        core_mod.build_core("gtrx", 4)


def test_wrong_state_shape_is_a_clear_error():
    c = small_core("trxl", memory_length=5)
    other = small_core("trxl", memory_length=7)
    with pytest.raises(ValueError, match="state must be"):
        c(torch.randn(2, 1, 3), other.initial_state(1), torch.zeros(2, 1, dtype=torch.bool))


@pytest.mark.parametrize("knob", ["dropout", "attn_dropout"])
def test_dropout_knobs_act_in_training_only(knob):
    c = small_core("gtrxl", memory_length=4, **{knob: 0.5})
    x = torch.randn(5, 2, 3)
    no = torch.zeros(5, 2, dtype=torch.bool)
    s = c.initial_state(2)
    torch.testing.assert_close(c(x, s, no)[0], c(x, s, no)[0])  # eval mode: deterministic
    c.train()
    assert (c(x, s, no)[0] - c(x, s, no)[0]).abs().max() > 1e-4
