"""The TRL-style Python API: one config and one trainer class per algorithm.

::

    from emrl import VMPOConfig, VMPOTrainer

    def short(prompts, completions, **columns):          # TRL's reward signature
        return [1.0 if len(c) < 4 else 0.0 for c in completions]

    trainer = VMPOTrainer(model="tiny", reward_funcs=[short],
                          args=VMPOConfig(output_dir="runs/vmpo", max_steps=10))
    trainer.train()
    trainer.save_model("runs/vmpo/model")

The classes are thin: ``XConfig`` is the command line's config dataclass
(:class:`emrl.lm.train_config.SFTConfig` / :class:`~emrl.lm.train_config.RLConfig`) with
``algo`` fixed by the class and the run directory as a field (``output_dir``), and
``XTrainer`` builds one :class:`emrl.lm.trainer.LMTrainer`, the loop ``emrl lm sft`` and
``emrl lm train`` run. A script and the equivalent command therefore write the same run
directory (``config.yaml`` loadable by ``--config``, ``metrics.jsonl``, checkpoints,
``final/``).

Data: ``train_dataset`` is a ``datasets.Dataset`` (or a list of dicts) with a ``prompt``
column of text, or a ``messages`` column of conversations (rendered with the tokenizer's
chat template; a last ``assistant`` turn becomes the demonstration), plus any other
columns, which reach the reward functions as keyword lists as in TRL (a final assistant
turn is also the ``answer`` that held-out exact match compares against, unless the rows
have an ``answer`` column). It is written to
``<output_dir>/dataset`` and read back as a task exactly like a dataset directory given
to ``--task``, so ``emrl lm eval --model <output_dir>/final`` finds it again. Without
``eval_dataset``, ``num_eval`` prompts of ``train_dataset`` are held out for evaluation
(as the command line does; ``num_eval=0`` trains on all of them).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emrl.config import cfg_field, with_aliases
from emrl.errors import ConfigError, EmrlError
from emrl.lm import train_config as _tc

#: name of the folder of ``output_dir`` that holds the datasets given to a trainer.
DATASET_DIR = "dataset"


def _fixed_algo(name: str) -> Any:
    return dataclasses.field(default=name, init=False,
                             metadata={"help": f"algorithm (fixed by the class: {name})"})


@dataclass
class SFTConfig(_tc.SFTConfig):
    """Supervised fine-tuning (spec §6): :class:`emrl.lm.train_config.SFTConfig` plus the run
    directory. Every field is also an ``emrl lm sft`` option."""

    output_dir: str = cfg_field("emrl_output", "run directory (config.yaml, metrics.jsonl, checkpoints, final/)")
    overwrite_output_dir: bool = cfg_field(False, "replace a run already in output_dir")


@with_aliases  # old field names (eta_lr, alpha_lr, ...) as Python keywords too
@dataclass
class _RLArgs(_tc.RLConfig):
    output_dir: str = cfg_field("emrl_output", "run directory (config.yaml, metrics.jsonl, checkpoints, final/)")
    overwrite_output_dir: bool = cfg_field(False, "replace a run already in output_dir")


@with_aliases  # old field names (eta_lr, alpha_lr, ...) as Python keywords too
@dataclass
class VMPOConfig(_RLArgs):
    """V-MPO (spec §5, §6): top-k, adaptive temperature η by its dual, weighted MLE under the
    α trust region. Every field is also an ``emrl lm train --algo vmpo`` option."""

    algo: str = _fixed_algo("vmpo")


@with_aliases  # old field names (eta_lr, alpha_lr, ...) as Python keywords too
@dataclass
class AWRConfig(_RLArgs):
    """AWR (spec §7): fixed temperature, clipped exponential advantage weights."""

    algo: str = _fixed_algo("awr")


@with_aliases  # old field names (eta_lr, alpha_lr, ...) as Python keywords too
@dataclass
class DARConfig(_RLArgs):
    """DAR (spec §7): the closed-form target mixing π_ref and π_old with coefficients α, β."""

    algo: str = _fixed_algo("dar")


@with_aliases  # old field names (eta_lr, alpha_lr, ...) as Python keywords too
@dataclass
class PPOConfig(_RLArgs):
    """PPO (spec §4): clipped importance ratio per token (value head + GAE) or per sequence."""

    algo: str = _fixed_algo("ppo")


def _base_config(args: Any) -> _tc.SFTConfig | _tc.RLConfig:
    """The command line's config of ``args`` (without the API-only fields), so the run's
    ``config.yaml`` is one ``emrl lm sft/train --config`` accepts."""
    base = _tc.SFTConfig if isinstance(args, _tc.SFTConfig) else _tc.RLConfig
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(base) if f.init}
    return base(**values)


# ------------------------------------------------------------------------------ data


def _rows_of(dataset: Any, what: str) -> list[dict]:
    """Plain rows of a ``datasets.Dataset`` / list of dicts / anything with ``to_list``."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - the lm extra installs it
        datasets = None
    if datasets is not None and isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise EmrlError(f"{what} is a DatasetDict with splits {list(dataset)}; pass one split, "
                        f"e.g. {what}=ds['train']")
    if hasattr(dataset, "to_list"):
        rows = dataset.to_list()
    elif isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        rows = list(dataset)
    else:
        raise EmrlError(f"{what} must be a datasets.Dataset or a list of dicts, got {type(dataset).__name__}")
    if not rows:
        raise EmrlError(f"{what} is empty (expected rows with a 'prompt' or 'messages' column)")
    if not all(isinstance(r, dict) for r in rows):
        raise EmrlError(f"{what}: every row must be a dict of columns")
    return rows


def _check_messages(messages: Any, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise EmrlError(f"{where}: a conversation must be a non-empty list of "
                        f"{{'role': ..., 'content': ...}} dicts, got {messages!r:.120}")
    return messages


def render_conversation(tokenizer: Any, messages: list[dict], *, where: str = "dataset") -> tuple[str, str | None]:
    """``(prompt, completion)`` of a conversation: the turns before a final ``assistant``
    turn rendered with the tokenizer's chat template (and its generation prompt), and that
    turn's text (``None`` when the conversation does not end with the assistant).

    Raises:
        EmrlError: the tokenizer has no chat template, or ``messages`` is malformed.
    """
    messages = _check_messages(messages, where)
    if not getattr(tokenizer, "chat_template", None):
        raise EmrlError(
            f"{where} holds conversations, which are rendered with the tokenizer's chat template, "
            "but this tokenizer has none: set tokenizer.chat_template (a Jinja template) and pass "
            "it as processing_class, or give a 'prompt' column of text instead")
    completion = None
    if messages[-1].get("role") == "assistant":
        completion = str(messages[-1]["content"])
        messages = messages[:-1]
        if not messages:
            raise EmrlError(f"{where}: a conversation holds only an assistant turn; there is no prompt")
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return str(prompt), completion


def prepare_rows(dataset: Any, tokenizer: Any, *, what: str = "train_dataset",
                 need_demonstrations: bool = False) -> list[dict]:
    """Rows ready for a task: a text ``prompt`` per row (conversations rendered with the
    chat template, see :func:`render_conversation`), the other columns kept.

    Raises:
        EmrlError: no ``prompt``/``messages`` column, a prompt that is not text, or (SFT)
            rows without a ``completion`` or ``answer``.
    """
    rows = _rows_of(dataset, what)
    cols = list(rows[0])
    out = []
    for i, raw in enumerate(rows):
        row = dict(raw)
        where = f"{what} row {i}"
        if "prompt" in row and isinstance(row["prompt"], list):  # TRL's conversational prompt
            row["prompt"], _ = render_conversation(tokenizer, row["prompt"], where=where)
        elif "prompt" not in row:
            if "messages" not in row:
                raise EmrlError(f"{what} has no 'prompt' column (nor 'messages'); its columns: "
                                f"{', '.join(map(str, cols))}")
            row["prompt"], completion = render_conversation(tokenizer, row["messages"], where=where)
            if completion is not None:
                if row.get("completion") is None:
                    row["completion"] = completion
                if row.get("answer") is None:  # what held-out exact match compares against
                    row["answer"] = completion
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise EmrlError(f"{where}: 'prompt' must be non-empty text, got {row['prompt']!r:.80}")
        if need_demonstrations and row.get("completion") is None and row.get("answer") is None:
            raise EmrlError(f"{where} has no 'completion' (nor 'answer', nor a final assistant turn): "
                            "supervised fine-tuning needs a demonstration per prompt")
        out.append(row)
    return out


def _save_rows(path: Path, train: list[dict], held: list[dict] | None) -> None:
    """``path``: a saved dataset (``train`` and, if given, ``test`` split), atomically."""
    import datasets

    from emrl.checkpoint import atomic_dir

    def ds(rows: list[dict]):
        try:
            return datasets.Dataset.from_list(rows)
        except Exception as e:  # noqa: BLE001 - pyarrow type errors name the column
            raise EmrlError(f"could not store the dataset rows (mixed column types?): {e}") from e

    splits = {"train": ds(train)}
    if held is not None:
        splits["test"] = ds(held)
    from datasets.utils import logging as ds_logging

    quiet = ds_logging.is_progress_bar_enabled()
    if quiet:  # a progress bar for a few kB of rows is noise in a training log
        ds_logging.disable_progress_bar()
    try:
        with atomic_dir(path) as tmp:
            datasets.DatasetDict(splits).save_to_disk(str(tmp))
    finally:
        if quiet:
            ds_logging.enable_progress_bar()


# ------------------------------------------------------------------------------ trainers


class _Trainer:
    """Shared by the trainer classes: see :class:`VMPOTrainer`."""

    config_class: type = _RLArgs
    _needs_demonstrations = False

    def __init__(
        self,
        model: Any = "tiny",
        reward_funcs: Sequence[Callable[..., Sequence[float]] | str] | Callable | str | None = None,
        args: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
    ) -> None:
        cls = self.config_class
        if args is None:
            args = cls()
        if not isinstance(args, cls):
            raise ConfigError(
                f"{type(self).__name__} needs args={cls.__name__}(...), got {type(args).__name__}"
                + (" (TRL's configs map to emrl's field by field: see 'Coming from TRL' in the docs)"
                   if "trl" in type(args).__module__ else ""))
        if callable(reward_funcs) or isinstance(reward_funcs, str):
            reward_funcs = [reward_funcs]
        self.reward_funcs = list(reward_funcs or [])
        if self.reward_funcs and hasattr(args, "reward_funcs"):
            from emrl.lm.rewards import reward_source

            names = [reward_source(f)["spec"] for f in self.reward_funcs]
            if args.reward_funcs and list(args.reward_funcs) != names:
                raise ConfigError("reward functions given twice: as reward_funcs=... and in "
                                  f"args.reward_funcs={args.reward_funcs}; give them once")
            # recorded in config.yaml by name (and checked against reward_weights)
            args = dataclasses.replace(args, reward_funcs=names)
        args.validate()
        if not args.output_dir:
            raise ConfigError(f"{cls.__name__}.output_dir must name a directory")
        self.args = args
        self.model, self.processing_class = self._load_model(model, processing_class)
        if eval_dataset is not None and train_dataset is None:
            raise EmrlError("eval_dataset was given without train_dataset; give both (or set "
                            "args.task for a built-in task)")
        if train_dataset is not None and args.task is not None:
            raise ConfigError(f"give either train_dataset or args.task, not both (task={args.task!r})")
        need = self._needs_demonstrations and getattr(args, "target", "delta") != "distill"
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self._train_rows = (prepare_rows(train_dataset, self.processing_class, what="train_dataset",
                                         need_demonstrations=need)
                            if train_dataset is not None else None)
        self._eval_rows = (prepare_rows(eval_dataset, self.processing_class, what="eval_dataset")
                           if eval_dataset is not None else None)
        self._trainer: Any = None
        self._resumed = False

    # ------------------------------------------------------------------ building
    def _load_model(self, model: Any, tokenizer: Any):
        from torch import nn

        from emrl.lm.models import load_model_and_tokenizer, prepare_tokenizer, set_dropout

        args = self.args
        if isinstance(model, (str, Path)):
            lm, tok = load_model_and_tokenizer(str(model), dropout=args.dropout, seed=args.seed)
            args.model = str(model)
        elif isinstance(model, nn.Module):
            lm = model
            if args.dropout is not None:
                set_dropout(lm, args.dropout)
            name = str(getattr(lm, "name_or_path", "") or "")
            tok = None
            if tokenizer is None:
                if name and Path(name).is_dir():
                    _, tok = load_model_and_tokenizer(name, seed=args.seed)
                else:
                    raise EmrlError(f"model is a {type(lm).__name__} object without a local directory to "
                                    "load its tokenizer from: pass processing_class=tokenizer")
            args.model = name or type(lm).__name__
        else:
            raise EmrlError(f"model must be 'tiny', a local model directory or a transformers model, "
                            f"got {type(model).__name__}")
        if tokenizer is not None:
            tok = tokenizer
            prepare_tokenizer(tok, lm)
        emb = lm.get_input_embeddings() if hasattr(lm, "get_input_embeddings") else None
        if emb is not None and len(tok) > emb.num_embeddings:
            raise EmrlError(f"the tokenizer has {len(tok)} tokens but the model's embedding has only "
                            f"{emb.num_embeddings} rows: pass the tokenizer the model was built with")
        return lm, tok

    def _build(self, resume: bool = False):
        """The :class:`~emrl.lm.trainer.LMTrainer` (built on first use)."""
        if self._trainer is not None:
            if resume and not self._resumed:
                raise EmrlError("train(resume_from_checkpoint=True) must be the first call on a "
                                "trainer (evaluate() or save_model() already started a new run)")
            return self._trainer
        import torch
        from accelerate import PartialState

        from emrl.lm.trainer import LMTrainer
        from emrl.rundir import holds_run

        args = self.args
        out = Path(args.output_dir)
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.is_main_process:
            if resume and not holds_run(out):
                raise EmrlError(f"resume_from_checkpoint: no run to resume in {out}")
            if not resume and holds_run(out):
                if not args.overwrite_output_dir:
                    raise EmrlError(
                        f"output_dir {out} already holds a run: set overwrite_output_dir=True in the "
                        "config to replace it, or call train(resume_from_checkpoint=True) to continue it")
                shutil.rmtree(out)
            if self._train_rows is not None:
                _save_rows(out / DATASET_DIR, self._train_rows, self._eval_rows)
        state.wait_for_everyone()
        cfg = _base_config(args)
        if self._train_rows is not None:
            cfg.task = str((out / DATASET_DIR).resolve())
        self._trainer = LMTrainer(cfg, out, resume=resume, model=self.model, tokenizer=self.processing_class,
                                  reward_funcs=self.reward_funcs or None)
        self._resumed = resume
        return self._trainer

    # ------------------------------------------------------------------ the TRL surface
    @property
    def task(self):
        """The :class:`emrl.lm.tasks.Task` trained on (train and held-out rows, reward)."""
        return self._build().task

    def train(self, resume_from_checkpoint: bool = False) -> dict[str, Any]:
        """Run ``args.max_steps`` updates; write metrics, checkpoints and ``output_dir/final``.

        ``resume_from_checkpoint=True`` continues the run in ``output_dir`` from its latest
        checkpoint (with the same settings; only ``max_steps``, logging, saving and
        evaluation intervals may change). Returns the last logged metrics, with the final
        evaluation's ``eval/*``.
        """
        return self._build(resume=resume_from_checkpoint).train()

    def evaluate(self, num_prompts: int | None = None) -> dict[str, Any]:
        """Held-out accuracy (greedy and sampled) and reward of the current model.

        Returns :func:`emrl.lm.evaluate.evaluate`'s dict: ``accuracy``,
        ``sampled_accuracy``, ``pass@1``, ``pass@<n>`` (need an ``answer`` column),
        ``reward/mean``, ``sampled_reward/mean`` (need a reward), ``num_prompts``.
        """
        trainer = self._build()
        if not trainer.task.eval:
            raise EmrlError("nothing to evaluate on: the task has no held-out rows (pass eval_dataset=... "
                            "or set num_eval > 0)")
        return trainer.evaluate(num_prompts)

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Write the model, tokenizer and task info (``save_pretrained``) to ``output_dir``
        (default ``args.output_dir/final``); plain ``transformers`` loads it, and so do
        ``emrl lm eval --model`` and ``XTrainer(model=...)``."""
        from emrl.checkpoint import atomic_dir
        from emrl.lm.tasks import save_task_info

        trainer = self._build()
        path = Path(output_dir) if output_dir is not None else Path(self.args.output_dir) / "final"
        if trainer.accelerator.is_main_process:
            with atomic_dir(path) as tmp:
                trainer.unwrapped.save_pretrained(tmp)
                self.processing_class.save_pretrained(tmp)
                save_task_info(tmp, trainer.task)
        trainer.accelerator.wait_for_everyone()
        return path


class SFTTrainer(_Trainer):
    """Supervised fine-tuning with an EM target (spec §6): ``delta`` on the demonstrations,
    ``label_smoothing``, ``nbest`` (model samples weighted by reward) or ``distill``.

    ``SFTTrainer(model="tiny"|path|model, args=SFTConfig(...), train_dataset=ds)``; rows need
    a ``completion`` (or ``answer``, or a final assistant turn of ``messages``).
    ``reward_funcs`` is used by ``target="nbest"``.
    """

    config_class = SFTConfig
    _needs_demonstrations = True

    def __init__(self, model: Any = "tiny", args: SFTConfig | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None, *,
                 reward_funcs: Sequence[Any] | None = None) -> None:
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                         eval_dataset=eval_dataset, processing_class=processing_class)


class VMPOTrainer(_Trainer):
    """V-MPO on a causal LM (spec §5, §6), with TRL's ``GRPOTrainer`` signature.

    Args:
        model: ``"tiny"`` (the offline preset), a local model directory (e.g. an SFT run's
            ``final/``), or a ``transformers`` causal-LM object.
        reward_funcs: reward callables ``fn(prompts, completions, **columns) -> list[float]``
            or specs (``"module:function"``, ``"exact_match"``, a reward-model directory);
            summed with ``args.reward_weights``. None: the task's own verifier.
        args: :class:`VMPOConfig` (every field of ``emrl lm train``, plus ``output_dir``).
        train_dataset: a ``datasets.Dataset`` or a list of dicts with a ``prompt`` (or
            ``messages``) column; None: ``args.task`` (default: arithmetic).
        eval_dataset: held-out rows of the same form (None: ``num_eval`` prompts of
            ``train_dataset`` are held out).
        processing_class: the tokenizer (None: the model's own).
    """

    config_class = VMPOConfig


class AWRTrainer(_Trainer):
    """AWR on a causal LM (spec §7); the arguments of :class:`VMPOTrainer` with :class:`AWRConfig`."""

    config_class = AWRConfig


class DARTrainer(_Trainer):
    """DAR on a causal LM (spec §7); the arguments of :class:`VMPOTrainer` with :class:`DARConfig`."""

    config_class = DARConfig


class PPOTrainer(_Trainer):
    """PPO on a causal LM (spec §4); the arguments of :class:`VMPOTrainer` with :class:`PPOConfig`."""

    config_class = PPOConfig


__all__ = ["SFTConfig", "SFTTrainer", "VMPOConfig", "VMPOTrainer", "AWRConfig", "AWRTrainer",
           "DARConfig", "DARTrainer", "PPOConfig", "PPOTrainer", "prepare_rows", "render_conversation"]
