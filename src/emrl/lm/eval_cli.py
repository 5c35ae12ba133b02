"""``emrl lm eval``: held-out accuracy and reward of a model on a task.

::

    emrl lm eval --model DIR/final [--task SPEC] [--num-prompts N] [--num-samples K]
                 [--output FILE] [--config FILE.yaml] [--seed S] ...

Prints ``accuracy: <value>`` (greedy exact match; ``reward/mean`` when the task has no
answers) followed by the other metrics, and writes them as JSON to ``--output`` or, by
default, to a new file that never replaces a training run's own ``eval.json``:

* the model is a run's ``final/`` (emrl lm sft / train): ``RUN/eval-<timestamp>.json``;
* any other model: ``eval.json`` in the working directory (``eval-<timestamp>.json``
  there if an ``eval.json`` not written by ``emrl lm eval`` is in the way).

Without ``--task`` the task saved with the model by the emrl run that trained it is used
(same held-out split), and so are its reward functions; one the run recorded as defined in
a script (not importable by name) is replaced by the task's own reward, with a note, unless
``--reward-funcs`` names one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emrl.config import add_config_args, build_config, cfg_field
from emrl.errors import EmrlError


@dataclass
class EvalConfig:
    """Config of ``emrl lm eval`` (every field is also a ``--field-name`` option)."""

    HELP_GROUPS = {"model": "model & task", "sampling": "what to measure",
                   "reward": "reward", "output": "output & runtime"}

    model: str | None = cfg_field(None, "'tiny' or a local HF causal-LM directory (required)", group="main")
    task: str | None = cfg_field(
        None, "task SPEC: reasoning_gym:<name>[?k=v&...], a data file or saved dataset dir; none: the "
        "task saved with the model, else the default arithmetic task", group="model")
    num_eval: int | None = cfg_field(
        None, "held-out set size when building the task (none: the saved one, or 200)", group="model")
    template: str | None = cfg_field(
        None, "prompt template override, str.format placeholders: {question} and metadata fields "
        "(reasoning-gym), or a dataset's columns such as {prompt}", group="model")
    seed: int = cfg_field(0, "seed of sampling, and of the task split when --task is given", group="model")
    num_prompts: int = cfg_field(200, "held-out prompts to evaluate on", group="sampling")
    greedy: bool = cfg_field(True, "evaluate greedy decoding (exact-match 'accuracy')", group="sampling")
    num_samples: int = cfg_field(
        0, "samples per prompt at --temperature for sampled accuracy and pass@k (0: none)", group="sampling")
    temperature: float = cfg_field(1.0, "sampling temperature for --num-samples", group="sampling")
    top_p: float = cfg_field(1.0, "nucleus sampling threshold for --num-samples", group="sampling")
    max_new_tokens: int | None = cfg_field(
        None, "completion budget in tokens (none: longest answer + EOS + 4)", group="sampling")
    truncate_prompts: bool = cfg_field(
        False, "cut prompts longer than the context from the left instead of failing", group="sampling")
    reward_funcs: list[str] | None = cfg_field(
        None, "reward functions: module:function (TRL signature), exact_match, verifier (reasoning-gym) "
        "or a reward-model dir (none: those recorded with the model's task, else the task's own)",
        group="reward")
    reward_weights: list[float] | None = cfg_field(None, "weights of --reward-funcs (none: all 1)",
                                                   group="reward")
    output: str | None = cfg_field(
        None, "file (or directory) to write the results to (none: RUN/eval-<timestamp>.json for a run's "
        "final/, else ./eval.json; never a training run's eval.json)", group="output")
    save_samples: bool = cfg_field(False, "also write each prompt's completions to the results",
                                   group="output")
    batch_size: int = cfg_field(256, "sequences per generate call", group="output")
    trust_remote_code: bool = cfg_field(False, "allow the model directory's own code", group="output")
    trust_task_code: bool = cfg_field(
        False, "import the reward functions (module:function) named by the task saved with the model (emrl_task.json); off: such a task needs --reward-funcs", group="reward")
    num_threads: int | None = cfg_field(
        None, "torch CPU threads (none: $EMRL_NUM_THREADS or all usable CPUs)", group="output")
    device: str | None = cfg_field(None, "device, e.g. cpu or cuda (none: cuda if available)", group="output")


#: ``written_by`` of the JSON files this command writes
WRITTEN_BY = "emrl lm eval"


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("config.yaml", "metrics.jsonl"))


def _ours(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("written_by") == WRITTEN_BY
    except (OSError, ValueError, AttributeError):
        return False


def _stamped(folder: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, i = folder / f"eval-{stamp}.json", 2
    while out.exists():
        out, i = folder / f"eval-{stamp}-{i}.json", i + 1
    return out


def default_output(model: str, output: str | None = None, cwd: str | Path | None = None) -> Path:
    """Where ``emrl lm eval`` writes its results (see the module docstring).

    ``output``: the user's ``--output`` (a file, or a directory to write into).
    Never a training run's ``eval.json``.
    """
    if output:
        out = Path(output)
        if not out.is_dir():
            return out
        folder = out
    else:
        p = Path(model)
        if p.name == "final" and _is_run_dir(p.parent):
            return _stamped(p.parent)
        folder = Path(cwd) if cwd is not None else Path.cwd()
    target = folder / "eval.json"
    if target.exists() and not _ours(target):
        return _stamped(folder)
    return target


def _saved_rewards(info: dict, cfg: EvalConfig) -> tuple[list | None, list | None, str | None]:
    """The reward functions to evaluate with: ``--reward-funcs``, else those recorded with
    the model's task. The third value explains a recorded one that cannot be imported here
    (e.g. defined in the training script); the caller then uses the task's own reward."""
    from emrl.lm.rewards import resolve_reward
    from emrl.lm.tasks import _code_specs

    specs = info.get("reward_funcs")
    if cfg.reward_funcs is not None or not specs:
        return cfg.reward_funcs, cfg.reward_weights, None
    sources = {s.get("spec"): s for s in info.get("reward_sources") or []}
    for spec in specs:  # defined in a script: recorded as not importable, so nothing is imported
        src = sources.get(spec, {})
        if spec.startswith("__main__:") or src.get("importable") is False:
            where = f" (defined in {src['defined_in']})" if src.get("defined_in") else ""
            return None, None, (f"the model was trained with reward function {spec!r}{where}; it was "
                                "defined in the training script, so it cannot be imported by name")
    if not cfg.trust_task_code and _code_specs(specs):
        # importing them would run code named by the model directory: load_task_from_info
        # refuses, saying which module and how to allow it
        return cfg.reward_funcs, cfg.reward_weights, None
    for spec in specs:
        if spec == "verifier":
            continue
        try:
            resolve_reward(spec)
        except EmrlError as e:
            src = sources.get(spec, {})
            where = f" (defined in {src['defined_in']})" if src.get("defined_in") else ""
            why = ("it was defined in the training script, so it cannot be imported by name"
                   if src.get("note") or spec.startswith("__main__:") else f"it cannot be imported here ({e})")
            return None, None, f"the model was trained with reward function {spec!r}{where}; {why}"
    return cfg.reward_funcs, cfg.reward_weights, None


_REWARD_HINT = ("To score with that function, put it in an importable module and pass --reward-funcs "
                "module:function (or --reward-funcs exact_match / verifier for a built-in reward)")


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """Load model and task, evaluate, write ``eval.json``; return the results."""
    import torch

    from emrl.checkpoint import atomic_write_json
    from emrl.lm.evaluate import evaluate
    from emrl.lm.models import load_model_and_tokenizer
    from emrl.lm.tasks import load_task, load_task_from_info, load_task_info
    from emrl.seeding import seed_everything
    from emrl.threads import configure_threads

    if not cfg.model:
        raise EmrlError("--model is required ('tiny' or a local model directory)")
    threads = configure_threads(cfg.num_threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars are noise in a CLI report
    start = time.time()
    model, tokenizer = load_model_and_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    info = load_task_info(cfg.model) if Path(cfg.model).is_dir() else None
    note = None
    if cfg.task is None and info is not None:
        funcs, weights, note = _saved_rewards(info, cfg)
        if note is not None:
            info = {**info, "reward_funcs": None, "reward_weights": None}
        task = load_task_from_info(
            info, num_eval=cfg.num_eval, template=cfg.template, reward_funcs=funcs,
            reward_weights=weights, num_train=0, trust_code=cfg.trust_task_code,
            where=f"model {cfg.model}", tokenizer=tokenizer,
        )
        if note is not None and task.reward_fn is None and not task.has_answers:
            raise EmrlError(f"{note}, and task {task.name!r} has no reward or answers of its own. "
                            f"{_REWARD_HINT}")
        if note is not None:
            own = "exact-match accuracy only" if task.reward_fn is None else "the task's own reward"
            note = f"{note}. reward/mean below uses {own} instead. {_REWARD_HINT}"
            print(f"note: {note}", file=sys.stderr, flush=True)
    else:
        task = load_task(
            cfg.task, seed=cfg.seed, num_train=0, num_eval=cfg.num_eval or 200,
            template=cfg.template, reward_funcs=cfg.reward_funcs, reward_weights=cfg.reward_weights,
            tokenizer=tokenizer,
        )
    if cfg.num_prompts > len(task.eval):
        raise EmrlError(
            f"--num-prompts {cfg.num_prompts} but task {task.name!r} holds out only "
            f"{len(task.eval)} prompts (raise --num-eval)"
        )
    seed_everything(cfg.seed)
    results = evaluate(
        model, tokenizer, task, num_prompts=cfg.num_prompts, greedy=cfg.greedy,
        num_samples=cfg.num_samples, temperature=cfg.temperature, top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        truncate_prompts=cfg.truncate_prompts, return_samples=cfg.save_samples,
    )
    results = {
        **{k: v for k, v in results.items() if k != "samples"},
        "model": cfg.model,
        "task": task.info(),
        "task_name": task.name,
        "seed": cfg.seed,
        "num_threads": threads,
        "device": str(device),
        "wall_time": time.time() - start,
        "written_by": WRITTEN_BY,
        **({"reward_note": note} if note else {}),
        **({"samples": results["samples"]} if "samples" in results else {}),
    }
    out = default_output(cfg.model, cfg.output)
    atomic_write_json(out, results)
    results["_path"] = str(out)
    return results


def _format(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _main(args: argparse.Namespace) -> int:
    cfg = build_config(EvalConfig, args)
    results = run_eval(cfg)
    path = results.pop("_path", None)
    head = "accuracy" if "accuracy" in results else "reward/mean"
    print(f"{head}: {_format(results[head])}")
    for k, v in results.items():
        if k != head and isinstance(v, (int, float)) and not isinstance(v, bool):
            print(f"{k}: {_format(v)}")
    print(f"wrote {path}")
    return 0


def register_eval(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``emrl lm``."""
    p = subparsers.add_parser(
        "eval",
        help="held-out accuracy / reward of a model on a task; writes eval.json",
        description=__doc__,
        usage="%(prog)s --model DIR|tiny [--task SPEC] [--num-samples K] [--output FILE] [OPTIONS]",
    )
    add_config_args(p, EvalConfig)
    p.set_defaults(func=_main)
    return p
