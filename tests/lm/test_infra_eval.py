"""Evaluation metrics and the ``emrl lm eval`` command."""

from __future__ import annotations

import json

import pytest
import torch

from emrl.cli import main
from emrl.lm.evaluate import evaluate, pass_at_k
from emrl.lm.generation import generate
from emrl.lm.models import TinyModelConfig, load_model_and_tokenizer
from emrl.lm.tasks import load_task, save_task_info

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_pass_at_k_closed_forms():
    assert pass_at_k(4, 0, 1) == 0.0 and pass_at_k(4, 4, 4) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """A tiny model and a saved dataset whose answers are the model's greedy output on
    exactly half of the held-out prompts (so accuracy must be 0.5)."""
    import datasets

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalrun")
    model, tok = load_model_and_tokenizer("tiny", tiny_config=SMALL, seed=0)
    prompts = [f"{i} + {i}=" for i in range(10)]
    g = generate(model, tok, prompts, greedy=True, max_new_tokens=6)
    test = [{"prompt": p, "answer": t if i % 2 == 0 else t + "#"} for i, (p, t) in
            enumerate(zip(prompts, g.texts, strict=True))]
    train = [{"prompt": f"{i} - 1=", "answer": "0"} for i in range(5)]
    datasets.DatasetDict(train=datasets.Dataset.from_list(train),
                         test=datasets.Dataset.from_list(test)).save_to_disk(str(root / "data"))
    run = root / "run"
    final = run / "final"
    model.save_pretrained(final)
    tok.save_pretrained(final)
    (run / "config.yaml").write_text("model: tiny\n")
    task = load_task(str(root / "data"))
    save_task_info(final, task)
    return model, tok, task, run


def test_evaluate_accuracy_sampled_and_pass_at_k(controlled):
    model, tok, task, _ = controlled
    model.train()
    torch.manual_seed(0)
    out = evaluate(model, tok, task, num_prompts=10, num_samples=3, max_new_tokens=6,
                   return_samples=True)
    assert model.training
    assert out["num_prompts"] == 10
    assert out["accuracy"] == 0.5 and out["reward/mean"] == 0.5  # exact-match reward
    assert 0.0 <= out["sampled_accuracy"] <= out["pass@3"] <= 1.0
    assert out["pass@1"] == pytest.approx(out["sampled_accuracy"])
    s = out["samples"]
    assert len(s) == 10 and all(len(x["sampled"]) == 3 for x in s)
    n_ok = sum(t == x["answer"] for x in s for t in x["sampled"])
    assert out["sampled_accuracy"] == pytest.approx(n_ok / 30)


def test_eval_command_uses_saved_task_and_writes_eval_json(controlled, capsys):
    _, _, _, run = controlled
    rc = main(["lm", "eval", "--model", str(run / "final"), "--num-prompts", "10",
               "--max-new-tokens", "6", "--num-samples", "2", "--num-threads", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "accuracy: 0.5000"
    data = json.loads((run / "eval.json").read_text())
    assert data["accuracy"] == 0.5 and data["num_prompts"] == 10 and data["num_samples"] == 2
    assert data["task"]["spec"].endswith("data") and "pass@2" in data


def test_eval_command_explicit_task_and_output(controlled, tmp_path, capsys):
    _, _, _, run = controlled
    out = tmp_path / "e.json"
    rc = main(["lm", "eval", "--model", str(run / "final"), "--task",
               "reasoning_gym:basic_arithmetic?max_terms=2&max_digits=1&operators=+",
               "--num-prompts", "5", "--num-eval", "5", "--output", str(out), "--num-threads", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert text.startswith(f"accuracy: {data['accuracy']:.4f}")
    assert data["task_name"] == "reasoning_gym:basic_arithmetic" and data["num_prompts"] == 5


def test_eval_command_bad_input(tmp_path, capsys, controlled):
    _, _, _, run = controlled
    assert main(["lm", "eval", "--model", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["lm", "eval", "--model", str(run / "final"), "--num-prompts", "50"]) == 2
    assert "holds out only 10" in capsys.readouterr().err
