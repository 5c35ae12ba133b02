"""Tasks: prompts with demonstrations and a reward, split into train and held-out sets.

A task spec (``--task``) is one of

* ``None`` — the default task (:data:`DEFAULT_TASK_SPEC`): reasoning-gym
  ``basic_arithmetic`` with two terms of one or two digits, ``+`` and ``-``, prompted as
  ``"12 + 7="`` with the answer (``"19"``) as completion. About 12 tokens per example
  with the ``tiny`` tokenizer, so a tiny model learns it on a CPU in minutes;
* ``reasoning_gym:<name>[?key=value&...]`` — any reasoning-gym dataset with its options
  (``operators=+,-`` gives a list), rewarded by the dataset's own ``score_answer``;
* a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file or a directory written by
  ``datasets.save_to_disk``, with a ``prompt`` column and optionally ``completion``
  (demonstration), ``answer`` and any other columns (passed to reward functions).

Train and held-out (``eval``) sets are deterministic given ``seed`` and disjoint **by
question text**. reasoning-gym seeds item ``i`` with ``seed + i``, so datasets built with
nearby seeds share most items; we therefore build the held-out set first (from
``seed``), then the training set from a far-away seed, dropping every item whose
question text is already used (and duplicates). User datasets are grouped by prompt
text, the groups shuffled with ``seed`` and split, so one prompt never lands on both
sides.

The prompt fed to the model is ``template.format(**fields)``. Fields: ``question`` and
the scalar entries of ``metadata`` for reasoning-gym (e.g. ``expression``), the columns
for user datasets (``prompt`` is the raw column). The sample's completion (demonstration)
is the answer for reasoning-gym tasks, the ``completion`` column for user data.

The reward (spec §6's ``R(x, τ)``) is reasoning-gym's verifier, or user reward functions
(see :mod:`emrl.lm.rewards`); accuracy is exact match of the stripped completion with
the stripped ``answer``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emrl.errors import EmrlError, close_matches, unknown_name_error
from emrl.lm.rewards import (
    BUILTIN_REWARDS,
    build_reward,
    reward_name,
    reward_source,
)
from emrl.lm.task_core import (  # noqa: F401  (re-exported: the task API lives here)
    _TRAIN_SEED_OFFSET,
    DEFAULT_RG_NUM_TRAIN,
    DEFAULT_TASK_SPEC,
    DEFAULT_TASK_TEMPLATE,
    RG_PREFIX,
    RG_TEMPLATE,
    TASK_INFO_FILE,
    USER_EXTENSIONS,
    USER_TEMPLATE,
    Task,
    _parse_value,
    _template_fields,
    apply_template,
    parse_rg_spec,
)
from emrl.lm.task_files import _load_user_task


def _rg_registry() -> dict[str, Any]:
    import reasoning_gym  # noqa: F401 - registers the datasets
    from reasoning_gym.factory import DATASETS

    return DATASETS


def _make_rg_dataset(name: str, options: dict[str, Any], *, seed: int, size: int):
    registry = _rg_registry()
    if name not in registry:
        raise unknown_name_error("reasoning-gym dataset", name, sorted(registry))
    dataset_cls, config_cls = registry[name]
    import dataclasses

    valid = {f.name for f in dataclasses.fields(config_cls)} - {"seed", "size"}
    for key in options:
        if key not in valid:
            err = unknown_name_error(f"option of reasoning-gym dataset {name!r}:", key, sorted(valid))
            if "Did you mean" not in str(err):
                err = EmrlError(f"{err} Its options: {', '.join(sorted(valid))}.")
            raise err
    try:
        config = config_cls(**options, seed=seed, size=size)
        if hasattr(config, "validate"):
            config.validate()
        return dataset_cls(config=config)
    except EmrlError:
        raise
    except Exception as e:  # noqa: BLE001 - reasoning-gym validates with assert/ValueError
        raise EmrlError(f"reasoning-gym dataset {name!r} rejected options {options}: {e}") from e


def _rg_fields(item: dict) -> dict[str, Any]:
    fields: dict[str, Any] = {"question": item["question"]}
    for k, v in (item.get("metadata") or {}).items():
        if isinstance(v, (str, int, float, bool)) and k not in fields:
            fields[k] = v
    return fields


def _rg_row(item: dict, template: str) -> dict:
    answer = item.get("answer")
    return {
        "prompt": apply_template(template, _rg_fields(item)),
        "completion": None if answer is None else str(answer),
        "answer": None if answer is None else str(answer),
        "question": item["question"],
        "metadata": item.get("metadata") or {},
    }


def _rg_items(name, options, template, *, seed, want, exclude: set[str], hard_limit: int):
    """Up to ``want`` items whose question texts and prompts (template applied) are unique
    and not in ``exclude``.

    Generates chunks of items from ``seed`` onward until enough are found or
    ``hard_limit`` items were generated.
    """
    out: list[dict] = []
    ds = None
    seen = set(exclude)
    generated = 0
    chunk = max(64, 2 * want)
    while len(out) < want and generated < hard_limit:
        size = min(chunk, hard_limit - generated)
        ds = _make_rg_dataset(name, options, seed=seed + generated, size=size)
        for i in range(size):
            item = ds[i]
            q = item["question"]
            prompt = "\0" + apply_template(template, _rg_fields(item))  # prompts vs questions
            if q in seen or prompt in seen:
                continue
            seen.update((q, prompt))
            out.append(item)
            if len(out) >= want:
                break
        generated += size
    return out, ds


def _load_rg_task(spec, name, options, *, seed, num_train, num_eval, template, is_default):
    template = template if template is not None else (
        DEFAULT_TASK_TEMPLATE if is_default else RG_TEMPLATE
    )
    want_train = DEFAULT_RG_NUM_TRAIN if num_train is None else num_train
    eval_items, ds = _rg_items(
        name, options, template, seed=seed, want=num_eval, exclude=set(), hard_limit=max(64, 20 * num_eval)
    )
    if len(eval_items) < num_eval:
        raise EmrlError(
            f"reasoning-gym dataset {name!r} with options {options} gave only "
            f"{len(eval_items)} distinct questions; cannot hold out {num_eval}"
        )
    train_items, ds_train = _rg_items(
        name,
        options,
        template,
        seed=seed + _TRAIN_SEED_OFFSET,
        want=want_train,
        exclude={it["question"] for it in eval_items}
        | {"\0" + apply_template(template, _rg_fields(it)) for it in eval_items},
        hard_limit=max(64, 20 * want_train),
    )
    if num_train is not None and len(train_items) < num_train:
        raise EmrlError(
            f"reasoning-gym dataset {name!r} with options {options} has only "
            f"{len(train_items)} distinct questions besides the {num_eval} held out; "
            f"asked for num_train={num_train}"
        )
    if not train_items and want_train > 0:
        raise EmrlError(f"reasoning-gym dataset {name!r}: no training questions left")
    verifier_ds = next((d for d in (ds, ds_train) if d is not None), None)
    if verifier_ds is None:
        verifier_ds = _make_rg_dataset(name, options, seed=seed, size=1)

    def verifier(prompts, completions, question, answer, metadata, **_):
        return [
            float(verifier_ds.score_answer(c.strip(), {"question": q, "answer": a, "metadata": m}))
            for c, q, a, m in zip(completions, question, answer, metadata, strict=True)
        ]

    verifier.reward_name = f"verifier:{name}"
    return (
        [_rg_row(it, template) for it in train_items],
        [_rg_row(it, template) for it in eval_items],
        template,
        verifier,
    )


# ----------------------------------------------------------------------- user datasets


def load_task(
    spec: str | None,
    *,
    seed: int = 0,
    num_train: int | None = None,
    num_eval: int = 200,
    template: str | None = None,
    reward_funcs: Sequence[Any] | None = None,
    reward_weights: Sequence[float] | None = None,
    tokenizer: Any = None,
) -> Task:
    """Build a :class:`Task` from a spec (see module docstring).

    Args:
        spec: ``None`` (default task), ``reasoning_gym:<name>[?k=v&...]``, or a local file /
            saved dataset directory.
        seed: fixes which questions are generated/held out and their order.
        num_train: training rows (reasoning-gym: distinct questions, default
            :data:`DEFAULT_RG_NUM_TRAIN`; user data: all remaining rows).
        num_eval: held-out rows (distinct question texts).
        template: prompt template (``str.format`` fields, see module docstring).
        reward_funcs: reward specs replacing the default reward: ``"module:function"``,
            ``"exact_match"``, ``"verifier"`` (reasoning-gym), a local reward-model
            directory, or callables; combined with ``reward_weights`` (default 1 each).
        tokenizer: renders the prompts of a conversational dataset (TRL ``messages`` or
            list-of-messages ``prompt``) with its chat template (:mod:`emrl.lm.chat`).

    Raises:
        EmrlError: unknown dataset (with close matches) or option, missing file, empty
            dataset, no ``prompt`` column, template field missing, too few questions.
    """
    if num_eval < 0:
        raise EmrlError(f"num_eval must be >= 0, got {num_eval}")
    if num_train is not None and num_train < 0:
        raise EmrlError(f"num_train must be >= 0, got {num_train}")
    is_default = spec is None or spec == "" or spec == "default"
    resolved = DEFAULT_TASK_SPEC if is_default else str(spec)
    verifier = None
    notes: list[str] = []
    from emrl.lm import chat

    if resolved.startswith(RG_PREFIX):
        name, options = parse_rg_spec(resolved)
        train, evals, template, verifier = _load_rg_task(
            resolved, name, options, seed=seed, num_train=num_train, num_eval=num_eval,
            template=template, is_default=is_default,
        )
        task_name = "default" if is_default else f"reasoning_gym:{name}"
        default_reward = verifier
    else:
        path = Path(os.path.expanduser(resolved))
        if not path.exists():
            if os.sep not in resolved and not resolved.lower().endswith(USER_EXTENSIONS):
                # looks like a task name, not a file: suggest reasoning-gym datasets
                bare = resolved.split("?")[0].split(":")[-1]
                names = sorted(_rg_registry())
                matches = close_matches(bare, names)
                hint = (f" Did you mean: {', '.join(RG_PREFIX + m for m in matches)}?"
                        if matches else "")
                raise EmrlError(
                    f"unknown task {resolved!r}: expected 'reasoning_gym:<name>[?k=v&...]', a "
                    f"{'/'.join(USER_EXTENSIONS)} file or a saved dataset directory.{hint}"
                )
            raise EmrlError(
                f"task file {resolved!r} does not exist (expected 'reasoning_gym:<name>', a "
                f"{'/'.join(USER_EXTENSIONS)} file or a saved dataset directory)"
            )
        resolved = str(path.resolve())
        train, evals, template, notes = _load_user_task(
            resolved, seed=seed, num_train=num_train, num_eval=num_eval, template=template
        )
        task_name = path.name
        if any(chat.PROMPT_MESSAGES in r for r in train[:1] + evals[:1]):
            if tokenizer is None:
                raise EmrlError(f"dataset {resolved!r} is conversational: rendering its prompts "
                                "needs the model's tokenizer (load_task(..., tokenizer=...))")
            train, evals = chat.render_rows(train, tokenizer), chat.render_rows(evals, tokenizer)
        rows = evals or train
        default_reward = BUILTIN_REWARDS["exact_match"] if rows and all(
            r.get("answer") is not None for r in rows
        ) else None
    reward_fn = default_reward
    reward_specs: list[str] | None = None
    reward_sources: list[dict] | None = None
    if reward_funcs:
        specs = []
        for s in reward_funcs:
            if s == "verifier":
                if verifier is None:
                    raise EmrlError("reward 'verifier' exists only for reasoning-gym tasks")
                specs.append(verifier)
            else:
                specs.append(s)
        reward_fn = build_reward(specs, reward_weights)
        reward_sources = [reward_source(s) for s in reward_funcs]
        reward_specs = [src["spec"] for src in reward_sources]
    options = {
        "seed": seed,
        "num_train": num_train,
        "num_eval": num_eval,
        "template": template,
        "reward_funcs": reward_specs,
        "reward_weights": list(reward_weights) if reward_weights is not None else None,
    }
    if reward_sources is not None and not all(src["importable"] for src in reward_sources):
        options["reward_sources"] = reward_sources  # with how to re-create each one
    options["reward"] = None if reward_fn is None else reward_name(reward_fn)  # readable, for records
    return Task(
        name=task_name,
        spec=None if is_default else resolved,
        train=train,
        eval=evals,
        template=template,
        reward_fn=reward_fn,
        options=options,
        notes=notes,
    )


def save_task_info(model_dir: str | os.PathLike, task: Task) -> Path:
    """Write ``model_dir/emrl_task.json`` so ``emrl lm eval --model model_dir`` finds the task."""
    from emrl.checkpoint import atomic_write_json

    path = Path(model_dir) / TASK_INFO_FILE
    atomic_write_json(path, task.info())
    return path


def load_task_info(model_dir: str | os.PathLike) -> dict | None:
    """The task info saved next to a model (keyword arguments of :func:`load_task`), or None."""
    path = Path(model_dir) / TASK_INFO_FILE
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise EmrlError(f"cannot read task info {str(path)!r}: {e}") from e
    if not isinstance(info, dict) or "spec" not in info:
        raise EmrlError(f"task info {str(path)!r} is malformed (expected an object with 'spec')")
    return info


def _code_specs(specs: Any) -> list[str]:
    """The reward specs that would import a module (not a built-in name or a reward-model dir)."""
    if specs is None:
        return []
    if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
        raise EmrlError(f"task info: reward_funcs must be a list of strings, got {specs!r}")
    return [s for s in specs if s not in BUILTIN_REWARDS and s != "verifier"
            and not os.path.isdir(os.path.expanduser(s))]


def load_task_from_info(info: dict, *, trust_code: bool = False, where: str = "the model directory",
                        **overrides: Any) -> Task:
    """:func:`load_task` from a dict written by :func:`save_task_info` (``overrides`` win).

    Reward functions named by the saved info (``module:function``) are code chosen by
    whoever wrote the model directory: they are not imported unless ``trust_code`` or the
    caller passes its own ``reward_funcs`` (built-in names and reward-model directories
    need no code and are always allowed).

    Raises:
        EmrlError: the info names importable reward functions and neither applies.
    """
    kwargs = {k: info[k] for k in ("seed", "num_train", "num_eval", "template", "reward_funcs",
                                   "reward_weights") if k in info}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if not overrides.get("reward_funcs") and not trust_code:
        code = _code_specs(info.get("reward_funcs"))
        if code:
            modules = sorted({s.split(":")[0] for s in code})
            raise EmrlError(
                f"the task saved in {where} ({TASK_INFO_FILE}) names reward function(s) "
                f"{', '.join(map(repr, code))}, which would import module(s) {', '.join(map(repr, modules))}; "
                "emrl does not run code named by a model directory unless asked. Pass the reward "
                "functions yourself (--reward-funcs) or "
                "--trust-task-code to import the saved ones")
    return load_task(info.get("spec"), **kwargs)
