"""Issue 17 item 4 (+ issue 10 item 4 pieces): a run records the reward functions it used,
``lm eval`` of a model trained from a script explains the function it cannot import, the
last line of ``lm sft`` says what it is, and a user dataset that loses rows to the
held-out split says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from emrl.cli import main
from emrl.lm.rewards import SCRIPT_REWARD_NOTE, compute_rewards, reward_source
from emrl.lm.tasks import load_task

SCRIPT = '''
import sys

from emrl.lm.train_config import RLConfig
from emrl.lm.trainer import LMTrainer


def short_and_right(prompts, completions, answer, **_):
    return [float(c.strip() == a) - 0.01 * len(c) for c, a in zip(completions, answer)]


if __name__ == "__main__":
    cfg = RLConfig(model="tiny", max_steps=1, batch_size=2, num_samples=2, num_train=8, num_eval=4,
                   eval_num_prompts=4, eval_samples=0, max_new_tokens=4, num_threads=1)
    LMTrainer(cfg, sys.argv[1], reward_funcs=[short_and_right]).train()
'''


def test_reward_source_names_importable_functions_and_flags_script_ones():
    assert reward_source(compute_rewards) == {"spec": "emrl.lm.rewards:compute_rewards", "importable": True}
    assert reward_source("exact_match") == {"spec": "exact_match", "importable": True}
    assert reward_source("verifier")["importable"]

    def local(prompts, completions, **_):
        return [0.0] * len(completions)

    src = reward_source(local)
    assert src["importable"] is False and src["note"] == SCRIPT_REWARD_NOTE
    assert src["defined_in"] == str(Path(__file__).resolve())
    assert reward_source(lambda p, c, **_: [0.0] * len(c))["importable"] is False
    assert reward_source("__main__:fn")["note"] == SCRIPT_REWARD_NOTE


def test_model_trained_from_a_script_records_its_reward_and_evaluates(tmp_path, capsys, monkeypatch):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    env = dict(os.environ, EMRL_PROGRESS="0", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                           os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), str(run)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the run says which reward it used, and how to re-create it
    assert yaml.safe_load((run / "config.yaml").read_text())["reward_funcs"] == ["__main__:short_and_right"]
    info = json.loads((run / "final" / "emrl_task.json").read_text())
    assert info["reward_funcs"] == ["__main__:short_and_right"]
    (src,) = info["reward_sources"]
    assert src["importable"] is False and src["note"] == SCRIPT_REWARD_NOTE
    assert src["defined_in"] == str(script.resolve())
    # lm eval explains what it cannot import and still measures accuracy with the task's reward
    monkeypatch.chdir(tmp_path)
    args = ["lm", "eval", "--model", str(run / "final"), "--num-prompts", "4", "--max-new-tokens", "4",
            "--num-threads", "1"]
    assert main(args) == 0
    cap = capsys.readouterr()
    assert "reward function '__main__:short_and_right'" in cap.err and str(script.resolve()) in cap.err
    assert "--reward-funcs module:function" in cap.err
    out = Path(cap.out.splitlines()[-1][len("wrote "):])
    data = json.loads(out.read_text())
    assert "accuracy" in data and "defined in the training script" in data["reward_note"]
    # ... and uses the function when it is given as an importable module
    (tmp_path / "myrewards.py").write_text(textwrap.dedent(SCRIPT.split("if __name__")[0]))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main([*args, "--reward-funcs", "myrewards:short_and_right"]) == 0
    cap = capsys.readouterr()
    assert "note:" not in cap.err
    data = json.loads(Path(cap.out.splitlines()[-1][len("wrote "):]).read_text())
    assert data["task"]["reward_funcs"] == ["myrewards:short_and_right"]
    assert data["reward/mean"] < 1.0  # the length penalty of short_and_right


def test_lm_sft_last_line_is_the_final_held_out_greedy_accuracy(tmp_path, capsys):
    out = tmp_path / "sft"
    rc = main(["lm", "sft", "--output-dir", str(out), "--max-steps", "2", "--batch-size", "4",
               "--num-train", "8", "--num-eval", "4", "--eval-num-prompts", "4", "--eval-samples", "2",
               "--num-threads", "1"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    ev = json.loads((out / "eval.json").read_text())
    assert lines[-1] == f"final held-out greedy accuracy: {ev['accuracy']:.3f} (4 prompts)"
    assert lines[-2] == (f"final held-out sampled accuracy: {ev['sampled_accuracy']:.3f} "
                         "(4 prompts x 2 samples, T=1)")


def test_user_dataset_that_loses_rows_to_the_held_out_split_says_so(tmp_path):
    import datasets

    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(20)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task(str(path), num_eval=5)
    (note,) = task.notes
    assert "5 of the 20 rows of data.jsonl" in note and "--num-eval 0" in note and "'test' split" in note
    assert len(task.train) == 15
    assert load_task(str(path), num_eval=0).notes == [] and len(load_task(str(path), num_eval=0).train) == 20
    assert load_task(str(path), num_eval=5, num_train=0).notes == []  # evaluation only: nothing lost
    # a saved dataset's test split is the held-out set; training rows repeating its prompts are noted
    d = tmp_path / "saved"
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows),
                         test=datasets.Dataset.from_list(rows[:3])).save_to_disk(str(d))
    task = load_task(str(d))
    assert len(task.train) == 17 and len(task.eval) == 3
    assert task.notes == ["3 of the 20 training rows of saved were left out of training: their prompts "
                          "are also in its held-out split"]
    datasets.DatasetDict(train=datasets.Dataset.from_list(rows[3:]),
                         test=datasets.Dataset.from_list(rows[:3])).save_to_disk(str(tmp_path / "clean"))
    assert load_task(str(tmp_path / "clean")).notes == []


@pytest.mark.parametrize("spelling", ["--reward-funcs", "--reward-fns"])
def test_lm_train_accepts_both_spellings_and_records_reward_funcs(tmp_path, spelling, capsys):
    out = tmp_path / "rl"
    rc = main(["lm", "train", "--output-dir", str(out), spelling, "exact_match", "--max-steps", "1",
               "--batch-size", "2", "--num-samples", "2", "--num-train", "8", "--num-eval", "4",
               "--eval-num-prompts", "4", "--eval-samples", "0", "--max-new-tokens", "4",
               "--num-threads", "1"])
    assert rc == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["reward_funcs"] == ["exact_match"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("final held-out greedy accuracy: ") and lines[-1].endswith("(4 prompts)")
    assert lines[-2].startswith("last update's mean training reward: ")
    assert lines[-2].endswith("(2 prompts x 2 samples, T=1)")
