"""Issue 3 part 4: each SFT E-step target (δ, label smoothing, n-best, distillation) runs
through the trainer's one M-step and fits its target."""

from __future__ import annotations

import pytest
import torch
from trainer_helpers import demo_nll, make_trainer, sft_config

from emrl import objectives as O


@pytest.mark.parametrize("target", ["delta", "label_smoothing", "nbest"])
def test_sft_target_fits_demonstrations(tmp_path, target):
    cfg = sft_config(target=target, max_steps=25, learning_rate=1e-2, nbest_n=3, nbest_temperature=0.05)
    tr = make_trainer(cfg, tmp_path, out=None)
    before = demo_nll(tr)
    rec = tr.train()
    after = demo_nll(tr)
    assert after < before - 1.0, (target, before, after)
    assert rec["mstep/nonfinite_skipped"] == 0


def test_delta_loss_is_weighted_nll_of_demonstrations(tmp_path):
    tr = make_trainer(sft_config(batch_size=8), tmp_path, out=None)
    b = tr.algo.collect(tr.ctx, 0)
    tr.algo.estep(tr.ctx, b)
    assert torch.allclose(b["weights"], torch.full((8,), 1 / 8))
    tr.ctx.loss_scale = 1.0
    out = tr.forward(b, train=False, need_logits=True, grad=False)
    loss, _ = tr.algo.loss(tr.ctx, b, out)
    ref, _ = O.weighted_nll(out.logp, b["completion_mask"], torch.full((8,), 1 / 8))
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)


def test_label_smoothing_differs_from_delta(tmp_path):
    losses = {}
    for target in ("delta", "label_smoothing"):
        tr = make_trainer(sft_config(target=target, label_smoothing=0.3), tmp_path, out=None)
        b = tr.algo.collect(tr.ctx, 0)
        tr.algo.estep(tr.ctx, b)
        tr.ctx.loss_scale = 1.0
        out = tr.forward(b, train=False, need_logits=True, grad=False)
        losses[target] = float(tr.algo.loss(tr.ctx, b, out)[0])
    # an untrained model is near uniform: smoothing towards uniform lowers the cross-entropy
    assert losses["label_smoothing"] != pytest.approx(losses["delta"], rel=1e-3)


def test_nbest_weights_give_each_prompt_equal_mass(tmp_path):
    tr = make_trainer(sft_config(target="nbest", nbest_n=3, nbest_temperature=0.5, batch_size=4),
                      tmp_path, out=None)
    b = tr.algo.collect(tr.ctx, 0)
    m = tr.algo.estep(tr.ctx, b)
    w = b["weights"].view(4, 4)  # 3 samples + the demonstration per prompt
    assert torch.allclose(w.sum(1), torch.full((4,), 0.25), atol=1e-6)
    # the demonstration has reward 1 (all digits): never less weight than a sample
    assert bool((w[:, 3:] >= w[:, :3].max(1, keepdim=True).values - 1e-7).all())
    assert "reward/mean" in m


def test_distillation_moves_student_toward_teacher(tmp_path):
    # a teacher: the small model after a short δ-SFT run, saved as final/
    t_tr = make_trainer(sft_config(max_steps=20, learning_rate=1e-2), tmp_path, out="teacher", seed=1)
    t_tr.train()
    teacher = tmp_path / "teacher" / "final"
    cfg = sft_config(target="distill", teacher=str(teacher), max_steps=20, learning_rate=1e-2)
    st = make_trainer(cfg, tmp_path, out=None, seed=2)
    b = st.encode([r["prompt"] for r in st.task.train], [r["completion"] for r in st.task.train],
                  st.task.train)
    t_logits = st.forward_frozen(st.algo.teacher, b)

    def kl_to_teacher():
        out = st.forward(b, train=False, need_logits=True, grad=False)
        m = b["completion_mask"][:, 1:]
        return float(O.categorical_kl(t_logits, out.logits, mask=m).sum() / m.sum())

    before = kl_to_teacher()
    st.train()
    assert kl_to_teacher() < 0.5 * before


def test_distill_needs_same_vocabulary(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path / "other"
    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32)).save_pretrained(d)
    from emrl.lm.models import build_tiny_tokenizer

    build_tiny_tokenizer().save_pretrained(d)
    from emrl.errors import ConfigError

    with pytest.raises(ConfigError, match="vocabulary"):
        make_trainer(sft_config(target="distill", teacher=str(d)), tmp_path, out=None)
