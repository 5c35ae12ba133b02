"""`emrl experiment` subcommands: ``list``, ``run NAME``, ``report DIR``."""

from __future__ import annotations

import argparse
import shlex
import sys

from emrl.errors import EmrlError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to ``subparsers``."""
    p = subparsers.add_parser("list", help="the experiments, their questions and presets",
                              description="List the experiments (spec §2's research questions) and their presets.")
    p.set_defaults(func=_list)

    p = subparsers.add_parser(
        "run", help="run an experiment's grid (resumes: only missing cells run), then write its report",
        description="Run every cell (configuration x seed) of experiment NAME that DIR has no record of, "
                    "appending one JSON record per finished cell to DIR/records.jsonl, then write "
                    "DIR/report.md and its figures. An interrupted run, rerun, completes only the missing cells.")
    p.add_argument("name", metavar="NAME", help="experiment name (see: emrl experiment list)")
    p.add_argument("--preset", required=True, metavar="PRESET",
                   help="smoke (under a minute: checks the pipeline, not the conclusion), cpu (a laptop's "
                        "2 cores, >= 3 seeds) or gpu (a real model on a GPU machine)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="directory of the records and the report")
    p.add_argument("--seeds", type=_positive_int, default=None, metavar="N",
                   help="seeds per configuration (default: the preset's)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="J",
                   help="cells run at once in a local process pool (default: 1, in this process)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cells as tasks on the Ray cluster at ADDRESS (e.g. ray://host:10001 or "
                        "'auto'; 'local' starts a local one); needs the 'ray' extra; DIR must be on a file "
                        "system the workers share")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR's records (of another experiment or preset) instead of refusing")
    p.set_defaults(func=_run)

    p = subparsers.add_parser("report", help="regenerate DIR/report.md and its figures from the records",
                              description="Regenerate DIR/report.md and every PNG from DIR/records.jsonl and "
                                          "DIR/experiment.json, without running anything.")
    p.add_argument("dir", metavar="DIR", help="the --output-dir of `emrl experiment run`")
    p.set_defaults(func=_report)


def _list(args: argparse.Namespace) -> int:
    from emrl.experiments.framework import PRESET_NAMES, experiment_names, load_experiment

    for name in experiment_names():
        mod = load_experiment(name)
        presets = ", ".join(p for p in PRESET_NAMES if p in mod.PRESETS)
        print(f"{name:6s} {mod.SUMMARY}")
        print(f"       question: {mod.QUESTION}")
        print(f"       presets: {presets}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    parts = ["emrl", "experiment", "run", args.name, "--preset", args.preset, "--output-dir", args.output_dir]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    if args.ray:
        parts += ["--ray", args.ray]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> int:
    from emrl.experiments.framework import run_experiment

    res = run_experiment(args.name, args.preset, args.output_dir, seeds=args.seeds, jobs=args.jobs,
                         ray_address=args.ray, overwrite=args.overwrite, command=_command_line(args))
    print(f"{args.name}: ran {res['ran']} cells ({res['already']} were already recorded, {res['total']} in all); "
          f"report: {args.output_dir}/report.md")
    return 0


def _report(args: argparse.Namespace) -> int:
    from emrl.experiments.framework import write_report

    try:
        path = write_report(args.dir)
    except FileNotFoundError as e:  # pragma: no cover - write_report checks first
        raise EmrlError(str(e)) from None
    print(path, file=sys.stdout)
    return 0
