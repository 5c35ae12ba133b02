"""The task record and prompt templates shared by every task source (:mod:`emrl.lm.tasks`).

A :class:`Task` holds train and held-out rows with a reward; :func:`apply_template` builds
the prompt a model sees from a row's fields (``str.format`` placeholders).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import yaml

from emrl.errors import EmrlError
from emrl.lm.rewards import compute_rewards

RG_PREFIX = "reasoning_gym:"
DEFAULT_TASK_SPEC = (
    "reasoning_gym:basic_arithmetic?min_terms=2&max_terms=2&min_digits=1&max_digits=2"
    "&operators=+,-&allow_parentheses=false&allow_negation=false"
)
#: template of the default task: the bare expression then ``=`` (e.g. ``"5 - 33="``).
DEFAULT_TASK_TEMPLATE = "{expression}="
#: template of other reasoning-gym tasks.
RG_TEMPLATE = "{question}\nAnswer: "
#: template of user datasets: the ``prompt`` column unchanged.
USER_TEMPLATE = "{prompt}"
#: number of training items for reasoning-gym tasks when ``num_train`` is None.
DEFAULT_RG_NUM_TRAIN = 5000
TASK_INFO_FILE = "emrl_task.json"
_TRAIN_SEED_OFFSET = 1_000_003  # far from the held-out seeds seed .. seed + num_eval
USER_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Task:
    """Prompts with a reward, split into ``train`` and held-out ``eval`` rows.

    Rows are dicts with ``prompt`` (final text fed to the model, template applied),
    ``completion`` (demonstration, may be absent for user data), ``answer`` (if known)
    and the other columns. ``train`` and ``eval`` share no question text.
    """

    name: str
    spec: str | None
    train: list[dict]
    eval: list[dict]
    template: str
    reward_fn: Callable[..., Sequence[float]] | None
    options: dict = field(default_factory=dict)
    #: what a user should know about how the task was built (e.g. rows held out of training)
    notes: list[str] = field(default_factory=list)

    def reward_columns(self, rows: Sequence[dict]) -> dict[str, list[Any]]:
        """TRL-style keyword columns for ``rows``: every key except prompt/completion."""
        keys = [k for k in (rows[0] if rows else {}) if k not in ("prompt", "completion")]
        return {k: [r.get(k) for r in rows] for k in keys}

    def reward(self, prompts: Sequence[str], completions: Sequence[str], rows: Sequence[dict]) -> list[float]:
        """Rewards ``[N]`` of ``completions`` (validated by :func:`compute_rewards`).

        ``rows[i]`` is the task row that ``prompts[i]`` came from (rows repeat for k
        samples per prompt).
        """
        if self.reward_fn is None:
            raise EmrlError(
                f"task {self.name!r} has no reward: it has no 'answer' column and no reward "
                "functions were given (use reward functions 'module:function' or a reward model)"
            )
        if len(rows) != len(completions):
            raise EmrlError(f"task.reward: {len(rows)} rows for {len(completions)} completions")
        return compute_rewards(self.reward_fn, prompts, completions, self.reward_columns(rows)).tolist()

    def is_correct(self, completion: str, row: dict) -> bool:
        """Exact match: ``completion.strip() == str(row["answer"]).strip()``."""
        answer = row.get("answer")
        if answer is None:
            raise EmrlError(f"task {self.name!r} has no 'answer' column: accuracy is undefined")
        return completion.strip() == str(answer).strip()

    @property
    def has_answers(self) -> bool:
        rows = self.eval or self.train
        return bool(rows) and all(r.get("answer") is not None for r in rows)

    def info(self) -> dict:
        """Everything :func:`load_task` needs to rebuild this task (JSON-serialisable)."""
        return {"spec": self.spec, **self.options}


# ----------------------------------------------------------------------------- parsing


def _parse_value(text: str) -> Any:
    if "," in text and not text.strip().startswith(("[", "{")):
        return [_parse_value(t) for t in text.split(",")]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, (list, dict)) and not text.strip().startswith(("[", "{")):
        return text  # e.g. "-" parses as a YAML list; keep the literal text
    return text if value is None and text.strip().lower() not in ("null", "none", "~") else value


def parse_rg_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"reasoning_gym:name?a=1&b=x,y"`` -> ``("name", {"a": 1, "b": ["x", "y"]})``."""
    rest = spec[len(RG_PREFIX) :]
    name, _, query = rest.partition("?")
    name = name.strip()
    if not name:
        raise EmrlError(f"task spec {spec!r}: missing dataset name after 'reasoning_gym:'")
    options: dict[str, Any] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise EmrlError(f"task spec {spec!r}: cannot parse option {part!r} (use key=value&...)")
        # '+' is an operator in arithmetic options, not a URL-encoded space: use unquote.
        options[unquote(key.strip())] = _parse_value(unquote(value))
    return name, options


def _template_fields(template: str) -> list[str]:
    out = []
    try:
        for _, fname, _, _ in string.Formatter().parse(template):
            if fname is not None:
                if fname == "":
                    raise EmrlError(
                        f"prompt template {template!r} has a positional '{{}}'; use named "
                        "fields such as {question}"
                    )
                out.append(fname.split(".")[0].split("[")[0])
    except ValueError as e:
        raise EmrlError(f"prompt template {template!r} is malformed: {e}") from e
    return out


def apply_template(template: str, fields: dict[str, Any]) -> str:
    """``template.format(**fields)`` with a clear error for unknown fields."""
    for name in _template_fields(template):
        if name not in fields:
            raise EmrlError(
                f"prompt template {template!r} uses field {{{name}}}, which this task does "
                f"not have; available fields: {', '.join(sorted(fields))}"
            )
    return template.format(**fields)


# ----------------------------------------------------------------------- reasoning-gym

