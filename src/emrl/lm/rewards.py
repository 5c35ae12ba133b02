"""Reward functions for language-model tasks (TRL's calling convention).

A reward function maps a batch of completions to one float each:

    fn(prompts: list[str], completions: list[str], **columns) -> list[float]

where ``columns`` holds the task's other columns (``answer``, ...), one list entry per
completion — the convention of TRL's ``GRPOTrainer``, so users bring theirs unchanged.
The reward ``R(x, τ)`` of spec §6 (and §7) is what these functions return.

Sources:

* ``load_reward_fn("module:function")`` — any importable function;
* built-in names (:data:`BUILTIN_REWARDS`): ``exact_match`` (1 if the stripped completion
  equals the stripped ``answer``), and ``verifier`` for reasoning-gym tasks (the
  dataset's own ``score_answer``, provided by :class:`emrl.lm.tasks.Task`);
* :class:`RewardModel` — a local Hugging Face sequence-classification model scoring
  ``prompt + completion``;
* :func:`combine_rewards` — a weighted sum of several of the above.

:func:`compute_rewards` calls a reward function and validates what comes back (length,
finiteness), turning any failure into an :class:`~emrl.errors.EmrlError` that names the
function and the first bad index.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from emrl.errors import EmrlError, close_matches
from emrl.imports import import_user_module

RewardFn = Callable[..., Sequence[float]]


def reward_name(fn: Any) -> str:
    """A readable name of a reward function (used in error messages and metrics)."""
    name = getattr(fn, "reward_name", None) or getattr(fn, "__qualname__", None)
    if name is None:
        name = type(fn).__name__
    module = getattr(fn, "__module__", None)
    if getattr(fn, "reward_name", None) is None and module and module != "builtins":
        return f"{module}:{name}"
    return str(name)


#: what a run records for a reward function that cannot be imported by name
SCRIPT_REWARD_NOTE = "defined in a script — pass --reward-funcs to evaluate"


def _importable_as(fn: Any) -> str | None:
    """``"module:qualname"`` if importing that name gives back ``fn``, else None."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or module == "__main__" or "<" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is fn else None


def reward_source(spec: Any) -> dict[str, Any]:
    """How a run records one reward function (spec or callable), so it can be re-created.

    Returns ``{"spec": str, "importable": bool}`` plus, for a function that cannot be
    imported by name (defined in ``__main__``, i.e. the user's script, or inside another
    function), ``"defined_in"`` (its source file, when known) and ``"note"``
    (:data:`SCRIPT_REWARD_NOTE`). ``spec`` is what ``--reward-funcs`` takes: a built-in
    name, ``module:function``, or a reward-model directory (made absolute).
    """
    if isinstance(spec, str):
        if spec in BUILTIN_REWARDS or spec == "verifier":
            return {"spec": spec, "importable": True}
        if os.path.isdir(os.path.expanduser(spec)):
            return {"spec": str(Path(os.path.expanduser(spec)).resolve()), "importable": True}
        if spec.split(":")[0] != "__main__":
            return {"spec": spec, "importable": True}
        out: dict[str, Any] = {"spec": spec, "importable": False}
    else:
        own = getattr(spec, "reward_name", None)
        if isinstance(spec, RewardModel):
            return {"spec": spec.path, "importable": True}
        if own in BUILTIN_REWARDS and BUILTIN_REWARDS[own] is spec:
            return {"spec": own, "importable": True}
        if isinstance(own, str) and own.startswith("verifier:"):
            return {"spec": "verifier", "importable": True}
        name = _importable_as(spec)
        if name is not None:
            return {"spec": name, "importable": True}
        out = {"spec": reward_name(spec), "importable": False}
        code = getattr(spec, "__code__", None) or getattr(type(spec).__call__, "__code__", None)
        if code is not None and code.co_filename and not code.co_filename.startswith("<"):
            out["defined_in"] = str(Path(code.co_filename).resolve())
    out["note"] = SCRIPT_REWARD_NOTE
    return out


def exact_match(prompts: list[str], completions: list[str], answer: list[Any], **_: Any) -> list[float]:
    """1.0 where ``completion.strip() == str(answer).strip()``, else 0.0."""
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answer, strict=True)]


exact_match.reward_name = "exact_match"  # type: ignore[attr-defined]

BUILTIN_REWARDS: dict[str, RewardFn] = {"exact_match": exact_match}


def load_reward_fn(spec: str) -> RewardFn:
    """Import a reward function from ``"package.module:function"`` (or a built-in name).

    Raises:
        EmrlError: malformed spec, module not importable, no such attribute (with close
            matches), or the attribute is not callable.
    """
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise EmrlError(
            f"reward function {spec!r} must look like 'package.module:function' "
            f"(or be one of: {', '.join(sorted(BUILTIN_REWARDS))})"
        )
    module_name, attr = spec.split(":")
    module = import_user_module(module_name, f"reward function {spec!r}")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            matches = close_matches(part, names)
            hint = f" Did you mean: {', '.join(matches)}?" if matches else ""
            raise EmrlError(f"reward function {spec!r}: {module_name!r} has no {part!r}.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EmrlError(f"reward function {spec!r} is not callable (got {type(obj).__name__})")
    return obj


def compute_rewards(
    fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    columns: dict[str, Sequence[Any]] | None = None,
) -> torch.Tensor:
    """Call ``fn(prompts, completions, **columns)`` and validate the result.

    Returns:
        float32 tensor of shape ``[N]``, ``N = len(completions)``.

    Raises:
        EmrlError: naming the function if it raises, returns something that is not a
            sequence of numbers, returns the wrong number of values, or returns a
            non-finite value (with the first bad index).
    """
    name = reward_name(fn)
    n = len(completions)
    if len(prompts) != n:
        raise EmrlError(f"compute_rewards: {len(prompts)} prompts but {n} completions")
    try:
        out = fn(list(prompts), list(completions), **dict(columns or {}))
    except EmrlError:
        raise
    except SystemExit as e:  # a reward must not end the run silently
        raise EmrlError(f"reward function {name} called sys.exit({e.code!r}); a reward function must "
                        "return a list of floats") from e
    except Exception as e:  # noqa: BLE001 - any failure inside user code is reported
        raise EmrlError(f"reward function {name} raised {type(e).__name__}: {e}") from e
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().reshape(-1).tolist()
    try:
        values = list(out)
    except TypeError as e:
        raise EmrlError(
            f"reward function {name} must return a list of {n} floats, got {type(out).__name__}"
        ) from e
    if len(values) != n:
        raise EmrlError(
            f"reward function {name} returned {len(values)} values for {n} completions "
            f"(first bad index: {min(len(values), n)})"
        )
    floats = []
    for i, v in enumerate(values):
        try:
            f = float(v) if v is not None else math.nan
        except (TypeError, ValueError) as e:
            raise EmrlError(
                f"reward function {name} returned a non-number at index {i}: {v!r}"
            ) from e
        if not math.isfinite(f):
            raise EmrlError(f"reward function {name} returned a non-finite value {v!r} at index {i}")
        floats.append(f)
    return torch.tensor(floats, dtype=torch.float32)


class CombinedReward:
    """Weighted sum ``Σ_j w_j · r_j`` of reward functions (each one validated on its own).

    Attributes after each call: ``last_components`` maps each function's name to its
    ``[N]`` tensor (for logging ``reward/<name>``).
    """

    def __init__(self, fns_and_weights: Sequence[tuple[RewardFn, float]]):
        if not fns_and_weights:
            raise EmrlError("combine_rewards needs at least one (function, weight) pair")
        self.parts: list[tuple[RewardFn, float]] = []
        for item in fns_and_weights:
            try:
                fn, w = item
            except (TypeError, ValueError) as e:
                raise EmrlError(f"combine_rewards expects (function, weight) pairs, got {item!r}") from e
            if not callable(fn):
                raise EmrlError(f"combine_rewards: {fn!r} is not callable")
            w = float(w)
            if not math.isfinite(w):
                raise EmrlError(f"combine_rewards: weight of {reward_name(fn)} is not finite ({w})")
            self.parts.append((fn, w))
        self.reward_name = "+".join(
            f"{w:g}*{reward_name(fn)}" if w != 1 else reward_name(fn) for fn, w in self.parts
        )
        self.last_components: dict[str, torch.Tensor] = {}

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        total = torch.zeros(len(completions), dtype=torch.float32)
        self.last_components = {}
        for fn, w in self.parts:
            r = compute_rewards(fn, prompts, completions, columns)
            self.last_components[reward_name(fn)] = r
            total += w * r
        return total.tolist()


def combine_rewards(fns_and_weights: Sequence[tuple[RewardFn, float]]) -> CombinedReward:
    """Combine reward functions into one: ``R = Σ_j w_j · r_j`` (TRL's ``reward_weights``)."""
    return CombinedReward(fns_and_weights)


class RewardModel:
    """A local HF sequence-classification model as a reward function (TRL signature).

    Scores the text ``prompt + completion`` and returns the logit of ``label_index``
    (the single logit of a ``num_labels=1`` reward model by default). Runs in eval mode
    under ``torch.no_grad``, in batches of ``batch_size``, right-padded, truncated to
    ``max_length`` tokens (default: the model's context length) from the left so the
    completion is kept.

    Raises:
        EmrlError: the path is missing or not loadable as a sequence-classification model,
            or the model has several labels and no ``label_index`` was given.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        batch_size: int = 32,
        max_length: int | None = None,
        label_index: int | None = None,
        device: str | torch.device | None = None,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        p = Path(os.path.expanduser(str(path)))
        if not p.is_dir():
            raise EmrlError(f"reward model path {str(p)!r} does not exist or is not a directory")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(p), local_files_only=True, trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(p), local_files_only=True, trust_remote_code=trust_remote_code
            )
        except Exception as e:  # noqa: BLE001
            raise EmrlError(
                f"could not load a sequence-classification reward model from {str(p)!r}: {e}"
            ) from e
        num_labels = int(self.model.config.num_labels)
        if label_index is None:
            if num_labels != 1:
                raise EmrlError(
                    f"reward model {str(p)!r} has {num_labels} labels; give label_index to "
                    "pick the logit used as reward"
                )
            label_index = 0
        if not 0 <= label_index < num_labels:
            raise EmrlError(f"label_index {label_index} out of range for {num_labels} labels")
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise EmrlError(f"reward model tokenizer at {str(p)!r} has no pad or EOS token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        if device is not None:
            self.model.to(device)
        self.label_index = label_index
        self.batch_size = int(batch_size)
        from emrl.lm.models import context_length

        self.max_length = max_length or context_length(self.model)
        self.path = str(p.resolve())
        self.reward_name = f"reward_model:{p.name}"

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        device = next(self.model.parameters()).device
        scores: list[float] = []
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
            ).to(device)
            logits = self.model(**enc).logits  # [B, num_labels]
            scores.extend(logits[:, self.label_index].float().cpu().tolist())
        return scores


def resolve_reward(spec: str | RewardFn) -> RewardFn:
    """A reward function from a callable, a built-in name, ``module:function``, or a local
    reward-model directory."""
    if callable(spec):
        return spec
    spec = str(spec)
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    if os.path.isdir(os.path.expanduser(spec)):
        return RewardModel(spec)
    return load_reward_fn(spec)


def build_reward(
    specs: Sequence[str | RewardFn], weights: Sequence[float] | None = None
) -> RewardFn:
    """One reward function from several specs (see :func:`resolve_reward`) and weights.

    A single spec with weight 1 is returned as is; otherwise a :class:`CombinedReward`.
    """
    if not specs:
        raise EmrlError("no reward function given")
    if weights is None:
        weights = [1.0] * len(specs)
    if len(weights) != len(specs):
        raise EmrlError(f"{len(specs)} reward functions but {len(weights)} reward weights")
    fns = [resolve_reward(s) for s in specs]
    if len(fns) == 1 and float(weights[0]) == 1.0:
        return fns[0]
    return combine_rewards(list(zip(fns, weights, strict=True)))
