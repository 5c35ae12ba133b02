"""Issue 14 part 2: any causal LM by path, tried as a new user would.

Seven transformers families (Llama, Qwen2, Mistral, Gemma, Phi, GPT-2, GPT-NeoX), tiny
and randomly initialised, with an offline byte-level BPE tokenizer, saved to a
directory: ``emrl lm sft`` then ``emrl lm train`` with every RL algorithm from a JSONL
task and a TRL-signature reward; left padding (a padded row scores like the row alone),
EOS/pad (models without a pad token pad with EOS, and the mask still tells a completion's
EOS from padding), tied embeddings survive; chat prompts (TRL ``messages``) rendered by
the tokenizer's chat template, and a clear error without one.
"""

from __future__ import annotations

import json

import pytest
import torch
from arch_models import FAMILIES, save_family
from trainer_helpers import rl_config, sft_config

from emrl.cli import main
from emrl.errors import EmrlError
from emrl.lm.forward import completion_logprobs, encode_prompt_completion
from emrl.lm.models import load_model_and_tokenizer
from emrl.lm.tasks import load_task
from emrl.lm.trainer import LMTrainer

REWARD = "trainer_helpers:digit_fraction"  # fn(prompts, completions, **columns) -> list[float]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("arch")


@pytest.fixture(scope="module")
def task_file(root):
    path = root / "task.jsonl"
    with open(path, "w") as fh:
        for i in range(24):
            fh.write(json.dumps({"prompt": f"p{i}>", "completion": f" {i % 10}7", "answer": f"{i % 10}7"}) + "\n")
    return path


@pytest.fixture(scope="module")
def chat_file(root):
    path = root / "chat.jsonl"
    with open(path, "w") as fh:
        for i in range(24):
            msgs = [{"role": "user", "content": f"p{i}>"}, {"role": "assistant", "content": f"{i % 10}7"}]
            fh.write(json.dumps({"messages": msgs, "answer": f"{i % 10}7"}) + "\n")
    return path


_DIRS: dict[str, object] = {}


def model_dir(root, family):
    if family not in _DIRS:
        _DIRS[family] = save_family(family, root / family)
    return _DIRS[family]


SMALL_RUN = ["--max-steps", "1", "--batch-size", "2", "--max-new-tokens", "3", "--num-threads", "1",
             "--num-eval", "4", "--eval-num-prompts", "2", "--eval-samples", "0"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_loads_pads_left_and_keeps_ties(root, family):
    style = FAMILIES[family]
    model, tok = load_model_and_tokenizer(str(model_dir(root, family)))
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    if style["pad"] is None:  # no pad token of its own: pads with EOS
        assert tok.pad_token_id == tok.eos_token_id
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert tied == style["tie"]
    model.eval()
    prompts, comps = ["p1>", "the answer is digit p123>"], [" 17", " 2"]
    enc = encode_prompt_completion(tok, prompts, comps)
    ids, am, cm = enc["input_ids"], enc["attention_mask"], enc["completion_mask"]
    # layout: left padding, completion + EOS under the completion mask, right padding off it
    assert am[0, 0] == 0 and am[1, 0] == 1
    for r in range(2):
        last = int(cm[r].nonzero().max())
        assert ids[r, last] == tok.eos_token_id and am[r, last] == 1
        assert not cm[r, last + 1:].any() and not am[r, last + 1:].any()
    if style["add_bos"]:
        first = int(am[0].nonzero().min())
        assert ids[0, first] == tok.bos_token_id
    with torch.no_grad():
        both = completion_logprobs(model, ids, am, cm)
        for r in range(2):
            one = encode_prompt_completion(tok, prompts[r:r + 1], comps[r:r + 1])
            alone = completion_logprobs(model, one["input_ids"], one["attention_mask"], one["completion_mask"])
            got = both[r][cm[r]]
            assert torch.allclose(got, alone[0][one["completion_mask"][0]], atol=1e-4), family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_sft_then_every_rl_algorithm(root, family, task_file):
    path = model_dir(root, family)
    run = root / f"{family}-sft"
    assert main(["lm", "sft", "--model", str(path), "--task", str(task_file), "--output-dir", str(run),
                 *SMALL_RUN]) == 0
    final = run / "final"
    assert (final / "config.json").is_file()
    assert main(["lm", "train", "--algo", "vmpo", "--model", str(final), "--output-dir", str(root / f"{family}-vmpo"),
                 "--reward-fns", REWARD, "--num-samples", "2", *SMALL_RUN]) == 0
    for algo, extra in (("awr", {}), ("dar", {}), ("ppo", {}), ("ppo", {"ppo_level": "sequence"})):
        cfg = rl_config(algo=algo, model=str(final), max_steps=1, batch_size=2, num_samples=2, max_new_tokens=3,
                        eval_num_prompts=2, eval_samples=0, reward_funcs=[REWARD], **extra)
        rec = LMTrainer(cfg, None).train()
        assert rec["step"] == 1 and 0.0 <= rec["reward/mean"] <= 1.0, (family, algo)


def test_chat_messages_rendered_by_the_chat_template(root, chat_file):
    path = model_dir(root, "qwen2")
    _, tok = load_model_and_tokenizer(str(path))
    task = load_task(str(chat_file), num_eval=4, tokenizer=tok)
    row = task.train[0]
    user = row["prompt_messages"][0]["content"]
    assert row["prompt"] == f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    assert row["completion"] == row["answer"]
    seen = []

    def text_reward(prompts, completions, **cols):
        seen.extend(completions)
        assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)
        return [float(c.strip() == a) for c, a in zip(completions, cols["answer"], strict=True)]

    for cfg in (sft_config(model=str(path), max_steps=1, batch_size=2, eval_num_prompts=2, eval_samples=0),
                rl_config(model=str(path), max_steps=1, batch_size=2, num_samples=2, eval_num_prompts=2,
                          eval_samples=0)):
        cfg.task = str(chat_file)
        cfg.num_eval = 4
        tr = LMTrainer(cfg, None, reward_funcs=[text_reward])
        assert tr.task.train[0]["prompt"].startswith("<|im_start|>user\n")
        assert tr.train()["step"] == 1
    assert seen and all(isinstance(c, str) for c in seen)  # completions scored as text


def test_template_writing_bos_is_not_doubled(root, chat_file):
    _, tok = load_model_and_tokenizer(str(model_dir(root, "mistral")))
    task = load_task(str(chat_file), num_eval=4, tokenizer=tok)
    p = task.train[0]["prompt"]
    assert p.startswith("[INST]")  # the template's BOS is dropped: the tokenizer adds it
    ids = tok(p)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_chat_dataset_without_chat_template_is_a_clear_error(root, chat_file):
    _, tok = load_model_and_tokenizer(str(model_dir(root, "llama")))
    with pytest.raises(EmrlError, match="has no chat template"):
        load_task(str(chat_file), num_eval=4, tokenizer=tok)
    with pytest.raises(EmrlError, match="needs the model's tokenizer"):
        load_task(str(chat_file), num_eval=4)
    with pytest.raises(EmrlError, match="prompt template"):
        load_task(str(chat_file), num_eval=4, template="Q: {prompt}", tokenizer=tok)
