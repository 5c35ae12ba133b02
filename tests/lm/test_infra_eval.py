"""Evaluation metrics and the ``emrl lm eval`` command."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_eval_command_uses_saved_task_and_never_overwrites_the_runs_eval_json(controlled, capsys):
    _, _, _, run = controlled
    training_eval = {"accuracy": 0.25, "sampled_accuracy": 0.2, "pass@8": 0.5, "step": 300}
    (run / "eval.json").write_text(json.dumps(training_eval))
    written = []
    for _ in range(2):  # two evaluations: two files, the run's own eval.json untouched
        rc = main(["lm", "eval", "--model", str(run / "final"), "--num-prompts", "10",
                   "--max-new-tokens", "6", "--num-samples", "2", "--num-threads", "1"])
        assert rc == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "accuracy: 0.5000"
        assert lines[-1].startswith("wrote ")
        written.append(Path(lines[-1][len("wrote "):]))
    assert json.loads((run / "eval.json").read_text()) == training_eval
    assert written[0] != written[1]
    for path in written:
        assert path.parent == run and path.name.startswith("eval-") and path.suffix == ".json"
        data = json.loads(path.read_text())
        assert data["accuracy"] == 0.5 and data["num_prompts"] == 10 and data["num_samples"] == 2
        assert data["task"]["spec"].endswith("data") and "pass@2" in data
        assert data["written_by"] == "emrl lm eval"


def test_eval_of_a_model_that_is_not_a_run_writes_to_the_working_directory(controlled, tmp_path,
                                                                           monkeypatch, capsys):
    model, tok, task, _ = controlled
    bare = tmp_path / "bare_model"  # a model directory that is not an emrl run
    model.save_pretrained(bare)
    tok.save_pretrained(bare)
    save_task_info(bare, task)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["lm", "eval", "--model", str(bare), "--num-prompts", "4", "--max-new-tokens", "6",
            "--num-threads", "1"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {work / 'eval.json'}"
    assert not (bare / "eval.json").exists()
    assert json.loads((work / "eval.json").read_text())["num_prompts"] == 4
    assert main(args) == 0  # its own earlier output is replaced
    assert sorted(p.name for p in work.iterdir()) == ["eval.json"]
    # an eval.json that emrl lm eval did not write (e.g. the working directory is a run) stays
    (work / "eval.json").write_text(json.dumps({"accuracy": 0.1, "step": 5}))
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith(f"wrote {work / 'eval-'}")
    assert json.loads((work / "eval.json").read_text()) == {"accuracy": 0.1, "step": 5}
    # --output: exactly there (a directory: eval.json inside it)
    target = tmp_path / "out" / "mine.json"
    assert main([*args, "--output", str(target)]) == 0
    assert json.loads(target.read_text())["num_prompts"] == 4
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main([*args, "--output", str(folder)]) == 0
    assert (folder / "eval.json").is_file()


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
