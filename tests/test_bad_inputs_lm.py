"""Bad-input catalogue, language models (`emrl lm sft|train|eval`, `emrl demo`).

Each case: exit status 2, one ``error:`` line naming what is wrong (and what was
expected), no traceback, and the run directory unchanged or absent.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from bad_input_helpers import (
    LM_SMALL,
    assert_clear_error,
    copy_run,
    fingerprint,
    run_cli,
    write_module,
    write_task,
)

from emrl.cli import main
from emrl.metrics import read_metrics


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A task, a small config and two finished runs: SFT (cosine schedule, a checkpoint
    every update) and V-MPO from it (constant schedule)."""
    base = tmp_path_factory.mktemp("lm")
    task = write_task(base / "task.jsonl")
    small = base / "small.yaml"
    small.write_text(LM_SMALL)
    sft = base / "sft"
    assert main(["lm", "sft", "--model", "tiny", "--task", str(task), "--config", str(small), "--max-steps", "2",
                 "--save-every", "1", "--keep-checkpoints", "0", "--output-dir", str(sft)]) == 0
    rl = base / "rl"
    assert main(["lm", "train", "--algo", "vmpo", "--model", str(sft / "final"), "--config", str(small),
                 "--num-samples", "2", "--max-steps", "2", "--save-every", "1", "--keep-checkpoints", "0",
                 "--lr-scheduler", "constant", "--output-dir", str(rl)]) == 0
    return {"base": base, "task": task, "small": small, "sft": sft, "rl": rl}


def _sft(lm, out, *extra):
    return ["lm", "sft", "--model", "tiny", "--task", lm["task"], "--config", lm["small"], "--max-steps", "2",
            "--output-dir", out, *extra]


# ------------------------------------------------------------------ config values (new run)
@pytest.mark.parametrize(("extra", "fragments"), [
    (["--log-every", "0"], ["log_every must be >= 1, got 0"]),
    (["--eval-batch-size", "0"], ["eval_batch_size must be >= 1, got 0"]),
    (["--batch-size", "0"], ["batch_size must be >= 1"]),
    (["--learning-rate", "-1"], ["learning_rate must be > 0"]),
    (["--dropout", "1.5"], ["dropout must be in [0, 1)"]),
    (["--min-lr-ratio", "2"], ["min_lr_ratio must be in [0, 1]"]),
    (["--max-steps", "abc"], ["'max_steps' expects int, got 'abc'"]),
    (["--max-steps", "-1"], ["max_steps must be >= 0"]),
    (["--save-every", "-2"], ["save_every must be >= 0"]),
    (["--num-threads", "0"], ["num_threads must be >= 1"]),
    (["--adam-beta2", "1.0"], ["adam_beta2 must be in [0, 1)"]),
    (["--eval-temperature", "0"], ["eval_temperature must be > 0"]),
    (["--label-smoothing", "1.0"], ["label_smoothing must be in [0, 1)"]),
    (["--target", "distill"], ["target=distill needs --teacher DIR"]),
    (["--lerning-rate", "3e-3"], ["unknown option '--lerning-rate'", "Did you mean: --learning-rate"]),
    (["--maxsteps", "3"], ["unknown option '--maxsteps'", "--max-steps"]),
    (["--model", "/nonexistent/model"], ["model path '/nonexistent/model' does not exist"]),
    (["--task", "reasoning_gym:basic_arithmetc"], ["unknown reasoning-gym dataset", "basic_arithmetic"]),
    (["--task", "missing.jsonl"], ["task file 'missing.jsonl' does not exist"]),
    (["--task", "arithmetic"], ["unknown task 'arithmetic'"]),
    (["--task", "reasoning_gym:basic_arithmetic?min_termz=2"], ["min_termz", "min_terms"]),
    (["--tensorboard", "maybe"], ["unexpected argument 'maybe'", "emrl lm sft --help"]),
], ids=lambda v: "_".join(v) if isinstance(v, list) and v and v[0].startswith("--") else None)
def test_bad_sft_option_is_one_clear_line_and_writes_nothing(lm, tmp_path, capsys, extra, fragments):
    out = tmp_path / "run"
    rc, _, err = run_cli(_sft(lm, out, *extra), capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(out) is None


@pytest.mark.parametrize(("yaml_text", "fragments"), [
    ("lr_scheduler: cosinee\n", ["'lr_scheduler'", "must be one of constant, linear, cosine", "'cosinee'",
                                 "Did you mean: cosine"]),
    ("target: deltaa\n", ["'target'", "must be one of delta", "Did you mean: delta"]),
    ("mixed_precision: bf17\n", ["'mixed_precision'", "must be one of no, bf16, fp16", "Did you mean: bf16"]),
    ("kl_estimator: k3\n", ["unknown field 'kl_estimator'"]),  # RL-only: not an SFT field
    ("stepz: 3\n", ["unknown field 'stepz'"]),
    ("- a\n- b\n", ["must hold a mapping"]),
    ("max_steps: [1\n", ["not valid YAML"]),
    ("batch_size: many\n", ["'batch_size' expects int"]),
])
def test_bad_yaml_value_is_caught_before_the_run(lm, tmp_path, capsys, yaml_text, fragments):
    y = tmp_path / "bad.yaml"
    y.write_text(yaml_text)
    out = tmp_path / "run"
    rc, _, err = run_cli(["lm", "sft", "--model", "tiny", "--task", lm["task"], "--config", y,
                          "--output-dir", out], capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(out) is None


def test_yaml_baseline_outside_choices_in_lm_train(lm, tmp_path, capsys):
    y = tmp_path / "bad.yaml"
    y.write_text("baseline: grupo\n")
    out = tmp_path / "run"
    rc, _, err = run_cli(["lm", "train", "--model", lm["sft"] / "final", "--config", y, "--output-dir", out], capsys)
    assert_clear_error(rc, err, "'baseline'", "must be one of group_mean, loo, value, batch_mean", "'grupo'")
    assert fingerprint(out) is None


def test_missing_config_file(lm, tmp_path, capsys):
    rc, _, err = run_cli(["lm", "sft", "--config", tmp_path / "nope.yaml", "--output-dir", tmp_path / "run"],
                         capsys)
    assert_clear_error(rc, err, "config file not found")
    assert fingerprint(tmp_path / "run") is None


def test_argparse_choice_errors_exit_2(lm, tmp_path, capsys):
    rc, _, err = run_cli(_sft(lm, tmp_path / "run", "--lr-scheduler", "cosinee"), capsys)
    assert rc == 2 and "invalid choice: 'cosinee'" in err and "Traceback" not in err
    rc, _, err = run_cli(["lm", "train", "--algo", "vmpp", "--output-dir", tmp_path / "run"], capsys)
    assert rc == 2 and "invalid choice: 'vmpp'" in err
    assert fingerprint(tmp_path / "run") is None


def test_resume_and_overwrite_together_are_refused(lm, tmp_path, capsys):
    run = copy_run(lm["sft"], tmp_path / "run")
    before = fingerprint(run)
    rc, _, err = run_cli(_sft(lm, run, "--resume", "--overwrite"), capsys)
    assert rc == 2 and "not allowed with argument" in err
    assert fingerprint(run) == before


# ------------------------------------------------------------------------- model directory
def test_model_dir_without_config_json(lm, tmp_path, capsys):
    d = tmp_path / "model"
    d.mkdir()
    rc, _, err = run_cli(_sft(lm, tmp_path / "run", "--model", d), capsys)
    assert_clear_error(rc, err, "is not a Hugging Face model directory (no config.json)")
    assert fingerprint(tmp_path / "run") is None


def test_model_dir_without_tokenizer_files(lm, tmp_path, capsys):
    d = tmp_path / "model"
    shutil.copytree(lm["sft"] / "final", d)
    for p in d.iterdir():
        if p.name.startswith(("tokenizer", "special_tokens")):
            p.unlink()
    rc, _, err = run_cli(_sft(lm, tmp_path / "run", "--model", d), capsys)
    assert_clear_error(rc, err, "has no tokenizer files", "tokenizer.json", "save the tokenizer")
    assert fingerprint(tmp_path / "run") is None


def test_eval_of_a_model_dir_without_tokenizer_files(lm, tmp_path, capsys):
    d = tmp_path / "model"
    shutil.copytree(lm["sft"] / "final", d)
    for p in d.glob("tokenizer*"):
        p.unlink()
    before = fingerprint(d)
    rc, _, err = run_cli(["lm", "eval", "--model", d, "--num-prompts", "2"], capsys)
    assert_clear_error(rc, err, "has no tokenizer files")
    assert fingerprint(d) == before


# --------------------------------------------------------------------------------- data files
@pytest.mark.parametrize(("content", "fragments"), [
    (b'{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2"}\n{"prompt": "\xff"}\n',
     ["is not UTF-8 text", "byte 0xff at line 3"]),
    (b'{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": "2"}\n{"prompt": "c",\n',
     ["line 4 is not valid JSON"]),
    (b'{"prompt": "a", "answer": "1"}\n[1, 2]\n', ["line 2: expected a JSON object"]),
    (b'{"question": "a", "answer": "1"}\n{"question": "b", "answer": "2"}\n', ["no 'prompt' column"]),
    (b"", ["is empty"]),
    (b'{"prompt": 3, "answer": "1"}\n{"prompt": "b", "answer": "2"}\n', ["row 0 has no text in its 'prompt'"]),
], ids=["non_utf8", "bad_json_line_4", "non_object_line", "no_prompt_column", "empty", "prompt_not_text"])
def test_bad_task_file(lm, tmp_path, capsys, content, fragments):
    f = tmp_path / "data.jsonl"
    f.write_bytes(content)
    rc, _, err = run_cli(_sft(lm, tmp_path / "run", "--task", f), capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(tmp_path / "run") is None


def test_template_with_unknown_field(lm, tmp_path, capsys):
    rc, _, err = run_cli(_sft(lm, tmp_path / "run", "--template", "Q: {questoin}"), capsys)
    assert_clear_error(rc, err, "uses field {questoin}", "available fields")
    assert fingerprint(tmp_path / "run") is None


# ---------------------------------------------------------------------------- reward modules
def _train(lm, out, *extra):
    return ["lm", "train", "--algo", "vmpo", "--model", lm["sft"] / "final", "--task", lm["task"],
            "--config", lm["small"], "--num-samples", "2", "--max-steps", "1", "--output-dir", out, *extra]


@pytest.mark.parametrize(("source", "fragments"), [
    ("def reward(prompts, completions, **kw)\n    return [0.0] * len(completions)\n",
     ["has a syntax error at", "line 1"]),
    ("raise RuntimeError('boom at import')\n", ["raised RuntimeError: boom at import"]),
    ("import sys\nsys.exit(3)\n", ["called sys.exit(3)"]),
    ("import not_a_real_dependency_xyz\n", ["it needs 'not_a_real_dependency_xyz', which is not installed"]),
    ("def reward(prompts, completions, **kw):\n    return [0.0] * len(completions)\n",
     ["has no 'rewrd'", "Did you mean: reward"]),
    ("reward = 3\n", ["is not callable"]),
], ids=["syntax_error", "raises_at_import", "sys_exit_at_import", "missing_dependency", "misspelled_function",
        "not_callable"])
def test_bad_reward_module(lm, tmp_path, capsys, monkeypatch, source, fragments):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, source)
    fn = "rewrd" if "Did you mean: reward" in fragments else "reward"
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--reward-funcs", f"{name}:{fn}"), capsys)
    assert_clear_error(rc, err, f"reward function '{name}:{fn}'", *fragments)
    assert fingerprint(tmp_path / "run") is None


def test_reward_module_in_the_current_directory_gets_an_import_path_hint(lm, tmp_path, capsys, monkeypatch):
    name = write_module(tmp_path, "def r(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))
                                      and Path(p or ".").resolve() != tmp_path.resolve()])
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--reward-funcs", f"{name}:r"), capsys)
    assert_clear_error(rc, err, f"cannot import module '{name}' (not found)", "current directory",
                       "PYTHONPATH=.")
    assert fingerprint(tmp_path / "run") is None


def test_malformed_reward_spec_and_missing_module(lm, tmp_path, capsys):
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--reward-funcs", "justaname"), capsys)
    assert_clear_error(rc, err, "must look like 'package.module:function'")
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--reward-funcs", "no_such_module_xyz:f"), capsys)
    assert_clear_error(rc, err, "cannot import module 'no_such_module_xyz' (not found)")
    assert fingerprint(tmp_path / "run") is None


def test_reward_weights_of_another_length(lm, tmp_path, capsys):
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--reward-funcs", "exact_match",
                                "--reward-weights", "1,2"), capsys)
    assert_clear_error(rc, err, "reward_weights has 2 entries but reward_funcs has 1")
    assert fingerprint(tmp_path / "run") is None


def test_group_baseline_with_one_sample(lm, tmp_path, capsys):
    rc, _, err = run_cli(_train(lm, tmp_path / "run", "--num-samples", "1"), capsys)
    assert_clear_error(rc, err, "needs num_samples >= 2")
    assert fingerprint(tmp_path / "run") is None


def test_reward_calling_sys_exit_during_training_is_an_error_not_a_silent_exit(lm, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = write_module(tmp_path, "import sys\ndef r(prompts, completions, **kw):\n    sys.exit(3)\n")
    out = tmp_path / "run"
    rc, _, err = run_cli(_train(lm, out, "--reward-funcs", f"{name}:r"), capsys)
    assert_clear_error(rc, err, f"reward function {name}:r called sys.exit(3)")
    assert not (out / "final").exists() and not list(out.glob("checkpoint-*"))  # nothing claims completion


# ---------------------------------------------------------------------------- output directory
def test_output_dir_under_a_file(lm, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(_sft(lm, tmp_path / "afile" / "run"), capsys)
    assert_clear_error(rc, err, "cannot be created", "is a file, not a directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_dir_that_is_a_file(lm, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    rc, _, err = run_cli(_sft(lm, tmp_path / "afile"), capsys)
    assert_clear_error(rc, err, "exists and is not a directory")
    assert (tmp_path / "afile").read_text() == "x"


def test_output_dir_not_writable(lm, capsys):
    rc, _, err = run_cli(_sft(lm, "/sys/emrl-test-run"), capsys)
    assert_clear_error(rc, err, "/sys/emrl-test-run", "not writable")
    assert not Path("/sys/emrl-test-run").exists()


# --------------------------------------------------------------------- existing runs: nothing lost
def test_existing_run_needs_resume_or_overwrite(lm, tmp_path, capsys):
    run = copy_run(lm["sft"], tmp_path / "run")
    before = fingerprint(run)
    rc, _, err = run_cli(_sft(lm, run), capsys)
    assert_clear_error(rc, err, "already holds a run", "--resume", "--overwrite")
    assert fingerprint(run) == before


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--task", "reasoning_gym:basic_arithmetc"], ["unknown reasoning-gym dataset"]),
    (["--model", "/nonexistent/model"], ["does not exist"]),
    (["--log-every", "0"], ["log_every must be >= 1"]),
    (["--lr-scheduler", "linear", "--target", "distill"], ["target=distill needs --teacher"]),
], ids=["typo_task", "missing_model", "log_every_0", "distill_without_teacher"])
def test_overwrite_with_a_bad_flag_keeps_the_old_run(lm, tmp_path, capsys, extra, fragments):
    run = copy_run(lm["sft"], tmp_path / "run")
    before = fingerprint(run)
    rc, _, err = run_cli(_sft(lm, run, "--overwrite", *extra), capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(run) == before


def test_overwrite_with_a_bad_reward_module_keeps_the_old_rl_run(lm, tmp_path, capsys):
    run = copy_run(lm["rl"], tmp_path / "run")
    before = fingerprint(run)
    rc, _, err = run_cli(_train(lm, run, "--overwrite", "--reward-funcs", "no_such_module_xyz:f"), capsys)
    assert_clear_error(rc, err, "cannot import module 'no_such_module_xyz'")
    assert fingerprint(run) == before


def test_resume_of_a_directory_without_a_run(lm, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, _, err = run_cli(["lm", "sft", "--output-dir", tmp_path / "empty", "--resume"], capsys)
    assert_clear_error(rc, err, "--resume", "has no config.yaml")
    assert fingerprint(tmp_path / "empty") == {}


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--learning-rate", "0.5"], ["started with learning_rate=0.003 but this run has learning_rate=0.5"]),
    (["--max-steps", "4"], ["started with max_steps=2", "learning-rate schedule",
                            "lr_scheduler=cosine decays over max_steps"]),
    (["--seed", "9"], ["seed"]),
    (["--template", "{prompt}!"], ["started with template=None but this run has template='{prompt}!'"]),
], ids=["learning_rate", "max_steps_under_cosine", "seed", "template"])
def test_resume_with_changed_settings_is_refused_before_writing(lm, tmp_path, capsys, extra, fragments):
    run = copy_run(lm["sft"], tmp_path / "run")
    before = fingerprint(run)
    rc, _, err = run_cli(["lm", "sft", "--output-dir", run, "--resume", *extra], capsys)
    assert_clear_error(rc, err, *fragments)
    assert fingerprint(run) == before


def test_resume_of_an_old_format_checkpoint_is_refused(lm, tmp_path, capsys):
    import torch

    from emrl.checkpoint import load_checkpoint, write_manifest

    run = copy_run(lm["sft"], tmp_path / "run")
    ck = run / "checkpoint-2"
    state, meta = load_checkpoint(ck)
    for p in ck.iterdir():
        p.unlink()
    torch.save(state, ck / "state.pt")
    write_manifest(ck, meta)
    shutil.rmtree(run / "final")
    before = fingerprint(run)
    rc, _, err = run_cli(["lm", "sft", "--output-dir", run, "--resume"], capsys)
    assert_clear_error(rc, err, "old format", "--trust-checkpoint")
    assert fingerprint(run) == before
    # the user's explicit choice: it loads and the run finishes (in the new format)
    rc, _, err = run_cli(["lm", "sft", "--output-dir", run, "--resume", "--trust-checkpoint"], capsys)
    assert rc == 0, err
    assert (run / "final").is_dir() and (run / "checkpoint-2" / "state.json").is_file()


def test_resume_of_a_corrupted_checkpoint_is_refused(lm, tmp_path, capsys):
    run = copy_run(lm["sft"], tmp_path / "run")
    t = run / "checkpoint-2" / "tensors.safetensors"
    data = bytearray(t.read_bytes())
    data[len(data) // 2] ^= 0xFF
    t.write_bytes(bytes(data))
    before = fingerprint(run)
    rc, _, err = run_cli(["lm", "sft", "--output-dir", run, "--resume"], capsys)
    assert_clear_error(rc, err, "corrupted", "does not match its manifest")
    assert fingerprint(run) == before


def test_resume_with_a_partial_config_keeps_the_saved_fields(lm, tmp_path, capsys):
    """--resume --config part.yaml overrides only what part.yaml names (the rest comes from
    the run's config.yaml, not from the defaults); max_steps may grow under a constant
    schedule."""
    run = copy_run(lm["rl"], tmp_path / "run")
    part = tmp_path / "part.yaml"
    part.write_text("eval_num_prompts: 2\n")
    rc, _, err = run_cli(["lm", "train", "--output-dir", run, "--resume", "--config", part, "--max-steps", "3"],
                         capsys)
    assert rc == 0, err
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["num_samples"] == 2 and saved["batch_size"] == 8 and saved["eval_num_prompts"] == 2
    assert saved["max_steps"] == 3
    finals = [r for r in read_metrics(run / "metrics.jsonl") if "eval/accuracy" in r]
    assert [r["step"] for r in finals] == [0, 2, 3]  # step 0: the start model


# ------------------------------------------------------------------ code named by a model directory
def _model_with_saved_reward(lm, tmp_path, marker: Path) -> tuple[Path, str]:
    """A copy of the SFT model whose emrl_task.json names a reward module that would
    create ``marker`` when imported."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    name = write_module(mod_dir, f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                                 "def r(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    model = tmp_path / "model"
    shutil.copytree(lm["sft"] / "final", model)
    info = json.loads((model / "emrl_task.json").read_text())
    info["reward_funcs"] = [f"{name}:r"]
    (model / "emrl_task.json").write_text(json.dumps(info))
    return model, name


def test_lm_eval_does_not_import_reward_code_named_by_a_model_dir(lm, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    model, name = _model_with_saved_reward(lm, tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    before = fingerprint(model)
    rc, _, err = run_cli(["lm", "eval", "--model", model, "--num-prompts", "2"], capsys)
    assert_clear_error(rc, err, f"'{name}:r'", f"would import module(s) '{name}'", "--reward-funcs",
                       "--trust-task-code")
    assert not marker.exists() and fingerprint(model) == before
    # passing the reward yourself: the saved module is not imported
    rc, _, err = run_cli(["lm", "eval", "--model", model, "--num-prompts", "2", "--reward-funcs", "exact_match",
                          "--output", tmp_path / "eval.json"], capsys)
    assert rc == 0, err
    assert not marker.exists()
    # the explicit trust flag imports it
    rc, _, err = run_cli(["lm", "eval", "--model", model, "--num-prompts", "2", "--trust-task-code",
                          "--output", tmp_path / "eval.json"], capsys)
    assert rc == 0, err
    assert marker.exists()


def test_lm_train_does_not_import_reward_code_named_by_a_model_dir(lm, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "marker"
    model, name = _model_with_saved_reward(lm, tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    out = tmp_path / "run"
    rc, _, err = run_cli(["lm", "train", "--model", model, "--config", lm["small"], "--num-samples", "2",
                          "--max-steps", "1", "--output-dir", out], capsys)
    assert_clear_error(rc, err, f"would import module(s) '{name}'", "--reward-funcs", "--trust-task-code")
    assert not marker.exists() and fingerprint(out) is None


def test_lm_eval_asks_for_more_prompts_than_held_out(lm, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(lm["sft"] / "final", model)
    rc, _, err = run_cli(["lm", "eval", "--model", model, "--num-prompts", "500"], capsys)
    assert_clear_error(rc, err, "--num-prompts 500", "holds out only 8")


# ------------------------------------------------------------------------------------ demo
@pytest.mark.parametrize("stage", ["sft", "rl"])
def test_demo_refuses_a_run_that_is_not_its_own(lm, tmp_path, capsys, stage):
    out = tmp_path / "runs"
    out.mkdir()
    copy_run(lm[stage], out / stage)  # the user's own run, which the demo would replace
    before = fingerprint(out)
    rc, _, err = run_cli(["demo", "--output-dir", out], capsys)
    assert_clear_error(rc, err, f"{out / stage} holds something that is not a run of this demo", "--overwrite")
    assert fingerprint(out) == before
