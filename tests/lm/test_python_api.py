"""The TRL-style Python API (``from emrl import VMPOConfig, VMPOTrainer`` ...): real tiny
models, real datasets, real runs of a few updates."""

from __future__ import annotations

import json

import datasets
import pytest
from trainer_helpers import small_model

import emrl
from emrl import (
    AWRConfig,
    AWRTrainer,
    DARConfig,
    DARTrainer,
    PPOConfig,
    PPOTrainer,
    SFTConfig,
    SFTTrainer,
    VMPOConfig,
    VMPOTrainer,
)
from emrl.config import load_config
from emrl.errors import ConfigError, EmrlError
from emrl.lm.train_config import RLConfig
from emrl.lm.train_config import SFTConfig as CLISFTConfig
from emrl.metrics import read_metrics

FAST = dict(batch_size=4, num_samples=2, max_new_tokens=3, eval_num_prompts=4, eval_samples=0,
            num_threads=1, num_train=16, num_eval=4)


def digits(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def test_the_ten_line_script_trains_and_saves(tmp_path):
    """README's example: VMPOTrainer(model="tiny", reward_funcs=[fn], args=VMPOConfig(...))."""
    calls = []

    def my_fn(prompts, completions, **columns):
        calls.append(len(completions))
        return digits(prompts, completions)

    args = VMPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, **FAST)
    trainer = VMPOTrainer(model="tiny", reward_funcs=[my_fn], args=args)
    last = trainer.train()
    saved = trainer.save_model(tmp_path / "model")

    assert last["step"] == 2 and "estep/eta" in last and "eval/accuracy" in last
    # 4 prompts x 2 samples per update; the evaluations (step 0 and the end) score 4 greedy ones
    assert calls.count(8) == 2 and set(calls) == {4, 8}
    run = tmp_path / "run"
    assert (run / "final" / "config.json").is_file()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2]
    # the run's config.yaml is the command line's: `emrl lm train --config` accepts it
    cfg = load_config(RLConfig, run / "config.yaml")
    assert cfg.algo == "vmpo" and cfg.max_steps == 2
    assert len(cfg.reward_funcs) == 1 and cfg.reward_funcs[0].endswith("my_fn")  # recorded by name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(saved, local_files_only=True)
    AutoTokenizer.from_pretrained(saved, local_files_only=True)
    assert (saved / "emrl_task.json").is_file()
    assert set(trainer.evaluate(4)) >= {"accuracy", "num_prompts"}


def test_dataset_columns_reach_the_reward_functions(tmp_path):
    """A datasets.Dataset with a prompt column and extra columns, as in TRL; eval_dataset is
    the held-out set; an in-memory transformers model with its tokenizer."""
    train = datasets.Dataset.from_list(
        [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "level": i % 3} for i in range(12)])
    held = datasets.Dataset.from_list(
        [{"prompt": f"{i}-0=", "answer": str(i), "level": 9} for i in range(4)])
    seen: list[tuple[str, int, str]] = []

    def by_level(prompts, completions, level, answer, **_):
        seen.extend(zip(prompts, level, answer, strict=True))
        return [float(c.strip() == a) for c, a in zip(completions, answer, strict=True)]

    model, tok = small_model()
    trainer = VMPOTrainer(model=model, reward_funcs=by_level, processing_class=tok,
                          args=VMPOConfig(output_dir=str(tmp_path / "run"), max_steps=2, **FAST),
                          train_dataset=train, eval_dataset=held)
    trainer.train()
    train_rows = {r["prompt"]: r for r in train.to_list()}
    held_rows = {r["prompt"]: r for r in held.to_list()}
    trained_on = [s for s in seen if s[0] in train_rows]
    assert len(trained_on) == 2 * 4 * 2  # 2 updates x 4 prompts x 2 samples
    assert all(train_rows[p]["level"] == lv and train_rows[p]["answer"] == a for p, lv, a in trained_on)
    # the rest are the evaluations' greedy completions of the held-out prompts (step 0 and the end)
    held_calls = [(p, 9, r["answer"]) for p, r in held_rows.items()]
    assert [s for s in seen if s[0] not in train_rows] == held_calls * 2
    task = trainer.task
    assert [r["prompt"] for r in task.eval] == [r["prompt"] for r in held.to_list()]
    assert len(task.train) == 12
    info = json.loads((tmp_path / "run" / "final" / "emrl_task.json").read_text())
    assert info["spec"] == str((tmp_path / "run" / "dataset").resolve())


@pytest.mark.parametrize("trainer_cls,config_cls", [
    (SFTTrainer, SFTConfig), (AWRTrainer, AWRConfig), (DARTrainer, DARConfig), (PPOTrainer, PPOConfig)])
def test_every_algorithm_has_a_trainer(tmp_path, trainer_cls, config_cls):
    model, tok = small_model()
    fields = dict(FAST)
    if config_cls is SFTConfig:
        for k in ("num_samples",):
            fields.pop(k)
    args = config_cls(output_dir=str(tmp_path / "run"), max_steps=1, **fields)
    kw = {} if trainer_cls is SFTTrainer else {"reward_funcs": [digits]}
    last = trainer_cls(model=model, processing_class=tok, args=args, **kw).train()
    assert last["step"] == 1
    saved = (tmp_path / "run" / "config.yaml")
    if config_cls is SFTConfig:
        assert isinstance(load_config(CLISFTConfig, saved), CLISFTConfig)
    else:
        assert load_config(RLConfig, saved).algo == args.algo == trainer_cls.config_class.algo


def test_messages_dataset_is_rendered_with_the_chat_template(tmp_path):
    """A dataset of conversations: the tokenizer's chat template renders the prompt and the
    last assistant turn is the SFT demonstration."""
    model, tok = small_model()
    tok.chat_template = ("{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}a:{% endif %}")
    rows = [{"messages": [{"role": "user", "content": f"{i}+1"},
                          {"role": "assistant", "content": str(i + 1)}]} for i in range(10)]
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=datasets.Dataset.from_list(rows),
                         args=SFTConfig(output_dir=str(tmp_path / "run"), max_steps=2, **{
                             k: v for k, v in FAST.items() if k != "num_samples"}))
    trainer.train()
    by_prompt = {r["prompt"]: r for r in trainer.task.train + trainer.task.eval}
    assert by_prompt["u:3+1\na:"]["completion"] == "4"


def test_bad_inputs_are_clear_errors(tmp_path):
    model, tok = small_model()
    with pytest.raises(ConfigError, match="VMPOTrainer needs args=VMPOConfig"):
        VMPOTrainer(model=model, processing_class=tok, args=PPOConfig(output_dir=str(tmp_path)))
    with pytest.raises(EmrlError, match="no 'prompt' column"):
        VMPOTrainer(model=model, processing_class=tok, args=VMPOConfig(output_dir=str(tmp_path)),
                    train_dataset=datasets.Dataset.from_list([{"question": "1+1"}]))
    with pytest.raises(EmrlError, match="chat template"):
        VMPOTrainer(model=model, processing_class=tok, args=VMPOConfig(output_dir=str(tmp_path)),
                    train_dataset=[{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(EmrlError, match="needs a demonstration"):
        SFTTrainer(model=model, processing_class=tok, args=SFTConfig(output_dir=str(tmp_path)),
                   train_dataset=[{"prompt": "1+1="}])
    with pytest.raises(EmrlError, match="pass processing_class"):
        VMPOTrainer(model=model, args=VMPOConfig(output_dir=str(tmp_path)))
    with pytest.raises(TypeError):
        VMPOConfig(algo="ppo")  # the class fixes the algorithm


def test_existing_run_needs_overwrite_or_resume(tmp_path):
    out = str(tmp_path / "run")
    model, tok = small_model()
    # a constant schedule, so the run may be extended on resume (cosine decays over max_steps)
    args = VMPOConfig(output_dir=out, max_steps=1, lr_scheduler="constant", **FAST)
    VMPOTrainer(model=model, processing_class=tok, reward_funcs=[digits], args=args).train()
    with pytest.raises(EmrlError, match="overwrite_output_dir=True"):
        VMPOTrainer(model=model, processing_class=tok, reward_funcs=[digits], args=args).train()
    more = VMPOConfig(output_dir=out, max_steps=2, lr_scheduler="constant", **FAST)
    model, tok = small_model()
    last = VMPOTrainer(model=model, processing_class=tok, reward_funcs=[digits],
                       args=more).train(resume_from_checkpoint=True)
    assert last["step"] == 2 and [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1, 2]
    again = VMPOConfig(output_dir=out, max_steps=1, overwrite_output_dir=True, lr_scheduler="constant", **FAST)
    VMPOTrainer(model=model, processing_class=tok, reward_funcs=[digits], args=again).train()
    assert [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1]


def test_package_root_exports_stay_lazy():
    import subprocess
    import sys

    code = "import sys, emrl; assert 'torch' not in sys.modules; emrl.VMPOConfig; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    assert set(emrl.__all__) >= {"VMPOTrainer", "SFTConfig", "PPOTrainer"}
