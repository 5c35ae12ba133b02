"""The metrics writer: one JSON object per logged update in ``metrics.jsonl``.

Metric names are shared across algorithms (see the metric reference in the docs):
``step``, ``samples``, ``wall_time``, ``reward/mean``, ``estep/eta``, ``mstep/kl``,
``ppo/clip_fraction`` ...

Optionally mirrors the numeric scalars of every record to experiment trackers
(``report_to``): ``tensorboard`` (``DIR/tensorboard``, torch's ``SummaryWriter``), and
``wandb``, ``trackio``, ``mlflow`` through accelerate's tracker classes
(:mod:`accelerate.tracking`). Tracker runs are named after the run directory and grouped
under the project ``$EMRL_PROJECT`` (default ``emrl``); W&B writes its local files under
``DIR/wandb`` (``WANDB_MODE=offline`` keeps them there), MLflow under ``DIR/mlruns`` unless
``MLFLOW_TRACKING_URI`` says otherwise, trackio in its own local store (``$TRACKIO_DIR``).
``metrics.jsonl`` stays the record of truth: trackers are views of it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: tracker names accepted by ``report_to`` (``none``: no tracker, alone).
TRACKERS = ("tensorboard", "wandb", "trackio", "mlflow", "none")
#: the Python package each tracker needs (and the pip extra that installs it).
_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "report"), "wandb": ("wandb", "trackers"),
                     "trackio": ("trackio", "trackers"), "mlflow": ("mlflow", "trackers")}


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return v
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def resolve_report_to(report_to: Sequence[str] | str | None, *, tensorboard: bool = False) -> list[str]:
    """The trackers to write to, validated: ``report_to`` (names, or one comma-separated
    string) plus ``tensorboard`` when the ``tensorboard`` flag (its older alias) is set.

    Raises:
        ConfigError: an unknown tracker name (with close matches), or ``none`` together
            with another tracker.
    """
    from emrl.errors import ConfigError, close_matches

    if isinstance(report_to, str):
        report_to = report_to.split(",")
    names: list[str] = []
    for raw in report_to or ():
        name = str(raw).strip().lower()
        if not name:
            continue
        if name not in TRACKERS:
            sugg = close_matches(name, TRACKERS)
            hint = f" Did you mean: {', '.join(sugg)}?" if sugg else ""
            raise ConfigError(f"unknown tracker {raw!r} in report_to; expected some of "
                              f"{', '.join(TRACKERS)}.{hint}")
        if name not in names:
            names.append(name)
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"report_to: 'none' cannot be combined with other trackers, got {names}")
        names = []
    if tensorboard and "tensorboard" not in names:
        names.insert(0, "tensorboard")
    return names


def _flat_config(config: Any) -> dict[str, Any]:
    """A config (dataclass or mapping) as ``{name: bool|int|float|str|None}`` for trackers."""
    if config is None:
        return {}
    from emrl.config import to_dict

    out: dict[str, Any] = {}
    for k, v in to_dict(config).items():
        out[k] = v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)
    return out


def _open_tracker(name: str, run_dir: Path, run_name: str):
    """Start one accelerate tracker (``wandb``, ``trackio`` or ``mlflow``) for ``run_dir``."""
    from emrl.errors import EmrlError

    package, extra = _TRACKER_PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise EmrlError(f"report_to={name} needs the {package!r} package: pip install 'emrl[{extra}]' "
                        f"(or pip install {package})")
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    PartialState()  # accelerate's trackers log through its state (one process unless launched)

    project = os.environ.get("EMRL_PROJECT", "emrl")
    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "wandb":
        tracker = cls(project, name=run_name, dir=str(run_dir))
    elif name == "trackio":
        tracker = cls(project, name=run_name)
    else:  # mlflow: a local file store in the run directory unless a tracking URI is set
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            # MLflow keeps its file store working but asks for an explicit opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        tracker = cls(experiment_name=project, run_name=run_name)
    try:
        tracker.start()
    except Exception as e:  # noqa: BLE001 - report any tracker start failure as a user error
        raise EmrlError(f"could not start the {name} tracker: {type(e).__name__}: {e}") from e
    return tracker


class MetricsWriter:
    """Append metrics to ``<run_dir>/metrics.jsonl``; ``wall_time`` is added automatically.

    ``start_time`` lets a resumed run continue its clock; ``truncate_after_step`` drops
    lines logged after the checkpoint a run resumes from, so the file stays consistent
    (``keep(record)``: also drop the earlier records it returns False for).
    ``report_to`` names trackers (:data:`TRACKERS`) that receive every record's numeric
    scalars; ``tensorboard=True`` is an alias for adding ``"tensorboard"``. ``config``
    (the run's config dataclass) is stored with the tracker runs as their hyper-parameters.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        tensorboard: bool = False,
        start_time: float | None = None,
        truncate_after_step: int | None = None,
        keep: Callable[[dict[str, Any]], bool] | None = None,
        report_to: Sequence[str] | str | None = None,
        config: Any = None,
    ) -> None:
        trackers = resolve_report_to(report_to, tensorboard=tensorboard)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", -1) <= truncate_after_step
                    and (keep is None or keep(r))]
            from emrl.checkpoint import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(self.path, "a", buffering=1)
        self._t0 = time.time() - (start_time or 0.0)
        self._tb = None
        self._trackers: list[Any] = []
        if "tensorboard" in trackers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # pragma: no cover - optional dependency
                from emrl.errors import EmrlError

                raise EmrlError(
                    "TensorBoard logging needs the 'tensorboard' package: pip install 'emrl[report]'"
                ) from e
            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        run_dir = self.path.parent
        try:
            for name in trackers:
                if name != "tensorboard":
                    tracker = _open_tracker(name, run_dir, run_dir.resolve().name)
                    self._trackers.append(tracker)
                    tracker.store_init_configuration(_flat_config(config))
        except BaseException:
            self.close()
            raise

    @property
    def elapsed(self) -> float:
        """Seconds since the run started (continued across resumes)."""
        return time.time() - self._t0

    def log(self, metrics: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        """Write one record; returns it. Must contain ``step``."""
        rec = {**(metrics or {}), **kw}
        if "step" not in rec:
            raise ValueError("a metrics record needs a 'step'")
        rec.setdefault("wall_time", self.elapsed)
        rec = {k: _clean(v) for k, v in rec.items()}
        self._fh.write(json.dumps(rec) + "\n")
        if self._tb is not None or self._trackers:
            scalars = {k: v for k, v in rec.items()
                       if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if self._tb is not None:
                for k, v in scalars.items():
                    self._tb.add_scalar(k, v, rec["step"])
            for tracker in self._trackers:
                tracker.log(scalars, step=int(rec["step"]))
        return rec

    def close(self) -> None:
        """Close the file and finish every tracker run (safe to call twice)."""
        if not self._fh.closed:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        trackers, self._trackers = self._trackers, []
        for tracker in trackers:
            tracker.finish()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read every record of a ``metrics.jsonl`` (a torn last line, or any line that is not
    a JSON object, is ignored)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


# --------------------------------------------------------------------------------------
# diagnostics -> metric names: the one mapping both training loops use
# --------------------------------------------------------------------------------------
#: the fields of the E-step infos (emrl.objectives' VMPOInfo, WeightInfo, DARInfo) that
#: are logged, and their metric names
ESTEP_METRICS = (("eta", "estep/eta"), ("ess", "estep/ess"), ("selected_fraction", "estep/selected_fraction"),
                 ("weight_entropy", "estep/weight_entropy"), ("kl_to_uniform", "estep/kl_to_uniform"))
#: the fields of :class:`emrl.objectives.ppo.PPOInfo` that are logged
PPO_METRICS = (("clip_fraction", "ppo/clip_fraction"), ("approx_kl", "ppo/approx_kl"),
               ("ratio_std", "ppo/ratio_std"))


def _scalar(v: Any) -> float:
    return float(v.detach().float().mean()) if hasattr(v, "detach") else float(v)


def _from_info(info: Any, names: tuple[tuple[str, str], ...]) -> dict[str, float]:
    out = {}
    for src, dst in names:
        v = getattr(info, src, None)
        if v is not None:
            out[dst] = _scalar(v)
    return out


def estep_metrics(info: Any) -> dict[str, float]:
    """The logged metrics of an E-step's info (``VMPOInfo``, ``WeightInfo``, ``DARInfo``):
    ``estep/eta``, ``estep/ess``, ``estep/selected_fraction``, ``estep/weight_entropy``,
    ``estep/kl_to_uniform`` — those the info has (fields that
    are ``None``, e.g. with ``diagnostics=False``, are left out)."""
    return _from_info(info, ESTEP_METRICS)


def ppo_metrics(info: Any) -> dict[str, float]:
    """``ppo/clip_fraction``, ``ppo/approx_kl``, ``ppo/ratio_std`` of a ``PPOInfo``."""
    return _from_info(info, PPO_METRICS)


def trust_region_metrics(kl: Any, alpha: Any, eps_alpha: float, **parts: Any) -> dict[str, float]:
    """The trust region's metrics: ``mstep/kl`` (the KL to π_old), ``mstep/alpha``,
    ``mstep/eps_alpha`` and ``mstep/kl_budget_used`` (``kl / eps_alpha``); ``parts``
    adds ``mstep/<name>`` (e.g. ``kl_mu=..., alpha_mu=...`` of a Gaussian policy)."""
    kl_f = _scalar(kl)
    out = {"mstep/kl": kl_f, "mstep/alpha": _scalar(alpha), "mstep/eps_alpha": float(eps_alpha),
           "mstep/kl_budget_used": kl_f / float(eps_alpha)}
    out.update({f"mstep/{k}": _scalar(v) for k, v in parts.items()})
    return out


#: metric keys both training loops log for the same quantities, per algorithm (a test on
#: each side checks its loop logs all of them)
SHARED_METRICS: dict[str, tuple[str, ...]] = {
    "common": ("step", "samples", "reward/mean", "reward/std", "loss/policy", "mstep/grad_norm",
               "time/rollout_s", "time/update_s", "throughput/steps_per_s"),
    "vmpo": ("estep/eta", "estep/ess", "estep/selected_fraction", "estep/weight_entropy", "mstep/kl",
             "mstep/alpha", "mstep/eps_alpha", "mstep/kl_budget_used", "loss/temperature", "loss/alpha"),
    "ppo": ("ppo/clip_fraction", "ppo/approx_kl", "ppo/ratio_std"),
}
