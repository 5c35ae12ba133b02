"""Where a figure came from: package versions and machine, for records and reports.

Exact figures (accuracies, speeds) vary across CPUs and library versions, so every record
states both::

    from emrl.provenance import environment_info, format_environment
    info = environment_info()          # JSON-serialisable dict, put it in the record
    print(format_environment(info))    # one line for a markdown report

``python -m emrl.provenance`` prints the same as JSON; ``python -m emrl.provenance
--constraints`` prints ``pip freeze`` of the running environment as a pip constraints
file (how ``constraints-records.txt`` at the repository root was made, for users who want
the versions the records were made with).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: the distributions whose versions decide the figures (PyPI names)
KEY_PACKAGES = ("emrl", "torch", "transformers", "accelerate", "tokenizers", "datasets",
                "reasoning-gym", "gymnasium", "numpy")


def package_versions(names: tuple[str, ...] | list[str] = KEY_PACKAGES) -> dict[str, str | None]:
    """``{name: installed version}`` (``None`` for a package that is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs (all / usable by this process), OS, Python, torch threads and
    accelerator (if torch is importable)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def _git_commit() -> str | None:
    """The commit of the emrl source tree, when emrl runs from a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment_info(packages: tuple[str, ...] | list[str] = KEY_PACKAGES) -> dict[str, Any]:
    """Everything a record needs to say where its figures came from (JSON-serialisable):
    ``{"recorded_at", "packages": {name: version}, "machine": {...}, "emrl_commit"}``."""
    return {
        "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "packages": package_versions(packages),
        "machine": machine_info(),
        "emrl_commit": _git_commit(),
    }


def format_environment(info: dict[str, Any] | None = None) -> str:
    """One line for a report: ``torch 2.13.0, transformers 5.24.0, ...; CPU: <model> (2 of
    16 logical CPUs usable, 1 torch thread); Linux-...; Python 3.11.7``."""
    info = environment_info() if info is None else info
    pk = ", ".join(f"{n} {v}" for n, v in info.get("packages", {}).items() if v is not None)
    m = info.get("machine", {})
    cpus = f"{m.get('usable_cpus')} of {m.get('logical_cpus')} logical CPUs usable"
    if m.get("torch_threads") is not None:
        t = m["torch_threads"]
        cpus += f", {t} torch thread{'s' if t != 1 else ''}"
    parts = [pk, f"CPU: {m.get('cpu_model', 'unknown')} ({cpus})"]
    if m.get("accelerator"):
        parts.append(f"accelerator: {m['accelerator']}")
    parts += [m.get("platform", ""), f"Python {m.get('python', '?')}"]
    if info.get("emrl_commit"):
        parts.append(f"emrl commit {info['emrl_commit'][:12]}")
    return "; ".join(p for p in parts if p)


def constraint_lines(freeze: list[str]) -> list[str]:
    """``pip freeze`` lines as constraints: editable/URL installs and emrl itself dropped,
    local version labels (``torch==2.13.0+cpu``) cut to the public version."""
    out = []
    for line in freeze:
        line = line.strip()
        if not line or line.startswith(("#", "-e", "--")) or " @ " in line or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if re.sub(r"[-_.]+", "-", name).lower() == "emrl":
            continue
        out.append(f"{name}=={version.split('+', 1)[0]}")
    return sorted(out, key=str.lower)


def constraints_text() -> str:
    """A pip constraints file of the running environment (see the module docstring)."""
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    info = environment_info()
    header = [
        "# The package versions emrl's recorded figures (README, benchmarks/results) were made with.",
        "# To match them: pip install -c constraints.txt -c constraints-records.txt -e \".[all]\"",
        "# torch is the CPU build (as in constraints.txt). Regenerate: python -m emrl.provenance --constraints",
        f"# Recorded {info['recorded_at']} with Python {info['machine']['python']} on {info['machine']['platform']}",
    ]
    return "\n".join(header + constraint_lines(freeze)) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m emrl.provenance", description=__doc__.split("\n\n")[0])
    p.add_argument("--constraints", action="store_true",
                   help="print pip freeze of this environment as a constraints file")
    args = p.parse_args(argv)
    if args.constraints:
        sys.stdout.write(constraints_text())
    else:
        print(json.dumps(environment_info(), indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
