"""Tasks: reasoning-gym and user datasets, splits by text, templates, bad input."""

from __future__ import annotations

import json

import pytest

from emrl.errors import EmrlError
from emrl.lm.tasks import (
    DEFAULT_TASK_TEMPLATE,
    load_task,
    load_task_from_info,
    load_task_info,
    parse_rg_spec,
    save_task_info,
)

ARITH = "reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&max_digits=1&operators=+,-&allow_parentheses=false"


def _texts(rows, key="question"):
    return [r[key] for r in rows]


def test_default_task_short_prompts_disjoint_and_deterministic():
    a = load_task(None, seed=3, num_train=300, num_eval=50)
    b = load_task(None, seed=3, num_train=300, num_eval=50)
    assert a.name == "default" and a.template == DEFAULT_TASK_TEMPLATE
    assert len(a.train) == 300 and len(a.eval) == 50
    assert a.train == b.train and a.eval == b.eval
    assert not set(_texts(a.train)) & set(_texts(a.eval))
    assert len(set(_texts(a.train))) == 300 and len(set(_texts(a.eval))) == 50
    row = a.eval[0]
    assert row["prompt"] == row["metadata"]["expression"] + "="
    assert row["completion"] == row["answer"] == str(eval(row["metadata"]["expression"]))
    assert max(len(r["prompt"]) for r in a.train) <= len("100 - 100=")
    # the held-out set does not depend on the training-set size
    c = load_task(None, seed=3, num_train=20, num_eval=50)
    assert c.eval == a.eval
    d = load_task(None, seed=4, num_train=20, num_eval=50)
    assert d.eval != a.eval


def test_split_by_text_when_seeds_overlap():
    # a tiny question space (two terms of one digit): duplicates are frequent, and
    # reasoning-gym datasets at nearby seeds share items; the split must still be disjoint.
    t = load_task(ARITH, seed=0, num_train=150, num_eval=40)
    assert not set(_texts(t.train)) & set(_texts(t.eval))
    assert len(set(_texts(t.train))) == len(t.train)
    with pytest.raises(EmrlError, match="distinct questions"):
        load_task(ARITH, seed=0, num_train=400, num_eval=40)  # only 11*11*2 = 242 exist


def test_split_is_disjoint_by_prompt_too():
    # natural-language questions vary ("What is 5 - 3?", "Solve 5 - 3."), the template keeps
    # only the expression: equal prompts must not appear on both sides or twice.
    spec = ARITH + "&format_style=natural"
    t = load_task(spec, seed=0, num_train=100, num_eval=40, template="{expression}=")
    assert not {r["prompt"] for r in t.train} & {r["prompt"] for r in t.eval}
    assert len({r["prompt"] for r in t.train}) == 100


def test_rg_spec_options_and_template():
    name, opts = parse_rg_spec("reasoning_gym:basic_arithmetic?max_digits=3&operators=+,-&allow_negation=false")
    assert name == "basic_arithmetic"
    assert opts == {"max_digits": 3, "operators": ["+", "-"], "allow_negation": False}
    t = load_task(ARITH, num_train=5, num_eval=5, template="Q: {expression} A:")
    assert all(r["prompt"] == f"Q: {r['metadata']['expression']} A:" for r in t.train + t.eval)
    t2 = load_task("reasoning_gym:basic_arithmetic", num_train=3, num_eval=3)
    assert t2.eval[0]["prompt"] == t2.eval[0]["question"] + "\nAnswer: "
    with pytest.raises(EmrlError, match=r"\{nope\}.*available fields: .*expression"):
        load_task(ARITH, num_train=5, num_eval=5, template="{nope}=")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(EmrlError, match="basic_arithmetc.*Did you mean: basic_arithmetic"):
        load_task("reasoning_gym:basic_arithmetc")
    with pytest.raises(EmrlError, match="max_digit.*Did you mean: max_digits"):
        load_task("reasoning_gym:basic_arithmetic?max_digit=2")
    with pytest.raises(EmrlError, match="does not exist"):
        load_task("no_such_file.jsonl")
    with pytest.raises(EmrlError, match="unknown task 'basic_arithmetic'.*reasoning_gym:basic_arithmetic"):
        load_task("basic_arithmetic")
    with pytest.raises(EmrlError, match="Its options: .*max_digits"):
        load_task("reasoning_gym:basic_arithmetic?zzzzzz=1")


def test_rg_verifier_reward_and_exact_match():
    t = load_task(ARITH, num_train=5, num_eval=8)
    rows = t.eval[:3]
    a0 = rows[0]["answer"]
    completions = [a0, " " + rows[1]["answer"] + " ", "x" + rows[2]["answer"]]
    r = t.reward([x["prompt"] for x in rows], completions, rows)
    assert r[0] == 1.0 and r[1] == 1.0
    assert 0.0 < r[2] < 1.0  # reasoning-gym gives partial credit when the answer is inside
    assert t.is_correct(a0 + "\n", rows[0]) and not t.is_correct(a0 + "0", rows[0])


def _rows(n, answer=True, completion=True):
    out = []
    for i in range(n):
        r = {"prompt": f"q{i}?", "extra": i}
        if completion:
            r["completion"] = f"a{i}"
        if answer:
            r["answer"] = f"a{i}"
        out.append(r)
    return out


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
def test_user_dataset_formats(tmp_path, fmt):
    import datasets

    rows = _rows(30) + [{"prompt": "q0?", "completion": "b0", "answer": "a0", "extra": 99}]
    if fmt == "jsonl":
        path = tmp_path / "d.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "hf":
        path = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    else:
        path = tmp_path / f"d.{fmt}"
        import pandas as pd

        df = pd.DataFrame(rows)
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    t = load_task(str(path), seed=1, num_eval=10, template="Q {prompt} ->")
    assert len(t.eval) == 10
    assert not {r["prompt"] for r in t.train} & {r["prompt"] for r in t.eval}
    # both demonstrations of the duplicated prompt stay together (train or eval)
    q0 = [r for r in t.train + t.eval if r["prompt"] == "Q q0? ->"]
    assert len(q0) in (1, 2) and (len(q0) == 2) == (q0[0] in t.train)
    assert len(t.train) + len(t.eval) == 31 - (len(q0) == 1)
    assert all(r["prompt"].startswith("Q q") for r in t.train)
    assert all(isinstance(r["answer"], str) for r in t.eval)
    # exact-match reward by default because the data has answers
    row = t.eval[0]
    assert t.reward([row["prompt"]] * 2, [row["answer"], "wrong"], [row, row]) == [1.0, 0.0]


def test_saved_dataset_dict_uses_its_test_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(_rows(12)),
        test=datasets.Dataset.from_list(_rows(3)),
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    t = load_task(str(tmp_path / "dd"))
    assert [r["prompt"] for r in t.eval] == ["q0?", "q1?", "q2?"]
    assert len(t.train) == 9 and all(r["prompt"] not in {"q0?", "q1?", "q2?"} for r in t.train)


def test_user_dataset_bad_input(tmp_path):
    p = tmp_path / "noprompt.jsonl"
    p.write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    with pytest.raises(EmrlError, match="no 'prompt' column.*question"):
        load_task(str(p))
    e = tmp_path / "empty.jsonl"
    e.write_text("")
    with pytest.raises(EmrlError, match="empty"):
        load_task(str(e))
    c = tmp_path / "empty.csv"
    c.write_text("prompt,answer\n")
    with pytest.raises(EmrlError, match="empty"):
        load_task(str(c))
    bad = tmp_path / "data.txt"
    bad.write_text("hello")
    with pytest.raises(EmrlError, match="unsupported task file"):
        load_task(str(bad))
    # no answer column and no reward function: reward and accuracy are undefined
    n = tmp_path / "noanswer.jsonl"
    n.write_text("\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(6)))
    t = load_task(str(n), num_eval=2)
    with pytest.raises(EmrlError, match="no reward"):
        t.reward(["p0"], ["x"], [t.eval[0]])


def test_task_info_roundtrip(tmp_path):
    t = load_task(ARITH, seed=5, num_train=20, num_eval=10, template="{expression} =")
    assert load_task_info(tmp_path) is None
    save_task_info(tmp_path, t)
    info = load_task_info(tmp_path)
    assert info["spec"] == ARITH and info["seed"] == 5
    t2 = load_task_from_info(info, num_train=0)
    assert t2.eval == t.eval and t2.template == "{expression} =" and t2.train == []
