"""User datasets as tasks: JSONL/JSON/CSV/parquet files or a ``datasets.save_to_disk`` directory.

Rows need a ``prompt`` column and may have ``completion`` (demonstration), ``answer`` and
any other columns (passed to reward functions). Rows are grouped by prompt text, the
groups shuffled with ``seed`` and split, so one prompt never lands on both sides.
"""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

from emrl.errors import EmrlError
from emrl.lm.task_core import USER_EXTENSIONS, USER_TEMPLATE, apply_template


def _read_user_rows(path: Path) -> tuple[list[dict], list[dict] | None]:
    """Rows of a user file / saved dataset; the second list is a given held-out split."""
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001
            raise EmrlError(f"could not load a saved Hugging Face dataset from {str(path)!r}: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise EmrlError(
                    f"saved dataset {str(path)!r} has splits {list(ds)}; expected a 'train' split"
                )
            held = next((ds[s] for s in ("test", "validation", "eval") if s in ds), None)
            return ds["train"].to_list(), (held.to_list() if held is not None else None)
        return ds.to_list(), None
    if suffix in (".jsonl", ".json"):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise EmrlError(
                f"{str(path)!r} is not UTF-8 text: byte {data[e.start]:#04x} at line {line} "
                f"(byte offset {e.start}); save the file as UTF-8") from e
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise EmrlError(f"{str(path)!r} is not valid JSON: {e}") from e
            where = "element"
        else:
            rows = []
            for lineno, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise EmrlError(
                        f"{str(path)!r} line {lineno} is not valid JSON ({e.msg} at column {e.colno}); "
                        "expected one JSON object per line") from e
                if not isinstance(rows[-1], dict):
                    raise EmrlError(f"{str(path)!r} line {lineno}: expected a JSON object with a "
                                    f"'prompt' key, got {type(rows[-1]).__name__}")
            where = "line"
        if not all(isinstance(r, dict) for r in rows):
            raise EmrlError(f"{str(path)!r}: every JSON {where} must be an object with a 'prompt' key")
        return rows, None
    if suffix == ".csv":
        import pandas as pd

        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            return [], None
        return df.to_dict(orient="records"), None
    if suffix == ".parquet":
        import pandas as pd

        return pd.read_parquet(path).to_dict(orient="records"), None
    raise EmrlError(
        f"unsupported task file {str(path)!r}: expected {', '.join(USER_EXTENSIONS)} or a "
        "saved Hugging Face dataset directory"
    )


def _user_row(raw: dict, template: str) -> dict:
    row = dict(raw)
    row["prompt"] = apply_template(template, raw)
    if "answer" in row and row["answer"] is not None:
        row["answer"] = str(row["answer"])
    if "completion" in row and row["completion"] is not None:
        row["completion"] = str(row["completion"])
    return row


def _check_user_rows(rows: list[dict], where: str) -> None:
    if not rows:
        raise EmrlError(f"dataset {where} is empty (expected rows with a 'prompt' column)")
    if "prompt" not in rows[0]:
        raise EmrlError(
            f"dataset {where} has no 'prompt' column (columns: {', '.join(map(str, rows[0]))})"
        )
    for i, r in enumerate(rows):
        p = r.get("prompt")
        if not isinstance(p, str) or (isinstance(p, float) and math.isnan(p)):
            raise EmrlError(f"dataset {where}: row {i} has no text in its 'prompt' column ({p!r})")


def _load_user_task(spec, *, seed, num_train, num_eval, template):
    """Train and held-out rows of a user dataset, and notes on rows kept out of training."""
    from emrl.lm import chat

    path = Path(os.path.expanduser(spec))
    rows, held = _read_user_rows(path)
    if rows and chat.is_conversational(rows):
        if template is not None and template != USER_TEMPLATE:
            raise EmrlError(
                f"dataset {str(path)!r} is conversational: its prompts are rendered by the "
                f"tokenizer's chat template, so a prompt template ({template!r}) does not apply")
        rows = chat.to_conversational(rows, repr(str(path)))
        if held is not None:
            held = chat.to_conversational(held, f"{str(path)!r} (held-out split)")
    _check_user_rows(rows, repr(str(path)))
    template = template if template is not None else USER_TEMPLATE
    notes: list[str] = []
    if held is not None:
        _check_user_rows(held, f"{str(path)!r} (held-out split)")
        held_texts = {r["prompt"] for r in held}
        train_raw = [r for r in rows if r["prompt"] not in held_texts]
        eval_raw = list({r["prompt"]: r for r in reversed(held)}.values())[::-1][:num_eval]
        if len(train_raw) < len(rows) and num_train != 0:
            notes.append(
                f"{len(rows) - len(train_raw)} of the {len(rows)} training rows of {path.name} were "
                "left out of training: their prompts are also in its held-out split")
    else:
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(r["prompt"], []).append(r)
        texts = list(groups)
        random.Random(seed).shuffle(texts)
        n_eval = num_eval if len(texts) >= 2 * num_eval else min(num_eval, len(texts) // 2)
        eval_raw = [groups[t][0] for t in texts[:n_eval]]
        train_raw = [r for t in texts[n_eval:] for r in groups[t]]
        if n_eval and num_train != 0:
            notes.append(
                f"{len(rows) - len(train_raw)} of the {len(rows)} rows of {path.name} ({n_eval} prompts) "
                f"are held out for evaluation and not trained on (num_eval={num_eval}). To train on "
                "every row, save the dataset with a 'test' split for evaluation (datasets.DatasetDict"
                "(train=..., test=...).save_to_disk(DIR)) or pass --num-eval 0")
    if num_train is not None:
        train_raw = train_raw[:num_train]
    train = [_user_row(r, template) for r in train_raw]
    evals = [_user_row(r, template) for r in eval_raw]
    return train, evals, template, notes


# ---------------------------------------------------------------------------- loading
