"""`emrl experiment`: list, the smoke presets of rq1/rq3/rq4, byte-identical reports,
resuming after an interruption, Ray, and the bad inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_input_helpers import run_cli as run

from emrl.cli import main
from emrl.experiments.framework import META, RECORDS, read_records

CLI = "import sys; from emrl.cli import main; sys.exit(main())"


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def rq1_dir(tmp_path_factory):
    """rq1 --preset smoke with 2 jobs, written over another experiment's directory with --overwrite."""
    d = tmp_path_factory.mktemp("rq1") / "out"
    d.mkdir()
    (d / META).write_text(json.dumps({"experiment": "rq3", "preset": "smoke", "params": {}}))
    rc = main(["experiment", "run", "rq1", "--preset", "smoke", "--output-dir", str(d), "--jobs", "2",
               "--overwrite"])
    assert rc == 0
    return d


def test_list_shows_the_experiments(capsys):
    rc, out, _ = run(["experiment", "list"], capsys)
    assert rc == 0
    for name in ("rq1", "rq3", "rq4"):
        assert f"\n{name} " in "\n" + out
    assert "presets: smoke, cpu, gpu" in out
    assert "question:" in out


def test_rq1_smoke_records_report_and_figures(rq1_dir):
    recs, problems = read_records(rq1_dir)
    assert not problems
    assert sorted(r["cell"] for r in recs) == ["em-linear-s0", "em-tabular-s0", "identities-s0"]
    ident = next(r for r in recs if r["cell"] == "identities-s0")["result"]
    assert ident["sft_loss_diff"] < 1e-5 and ident["awr_vmpo_diff"] < 1e-12
    em = next(r for r in recs if r["cell"] == "em-linear-s0")["result"]
    assert em["min_increase_em"] >= -1e-12  # the EM guarantee on the exactly solved problem
    report = (rq1_dir / "report.md").read_text()
    assert "## Verdict" in report and "rq1_limits.png" in report and "rq1_em_monotone.png" in report
    assert "emrl experiment run rq1 --preset smoke" in report
    assert (rq1_dir / "rq1_limits.png").stat().st_size > 1000


def test_report_regenerates_byte_identical(rq1_dir, capsys):
    before = (rq1_dir / "report.md").read_bytes()
    (rq1_dir / "rq1_limits.png").unlink()
    rc, out, err = run(["experiment", "report", rq1_dir], capsys)
    assert rc == 0, err
    assert (rq1_dir / "report.md").read_bytes() == before
    assert (rq1_dir / "rq1_limits.png").exists()


def test_deleted_and_corrupted_records_are_rerun(rq1_dir, tmp_path, capsys):
    d = tmp_path / "rq1"
    shutil.copytree(rq1_dir, d)
    recs = lines(d / RECORDS)
    assert len(recs) == 3
    gone = json.loads(recs[0])["cell"]
    broken = json.loads(recs[2])["cell"]
    (d / RECORDS).write_text(recs[1] + "\n" + recs[2][:25] + "\n")  # drop one, truncate another
    rc, out, err = run(["experiment", "report", d], capsys)
    assert rc == 0
    assert f"{RECORDS} line 2: corrupted record" in err
    assert "Incomplete:** 2 cells missing" in (d / "report.md").read_text()
    rc, out, err = run(["experiment", "run", "rq1", "--preset", "smoke", "--output-dir", d], capsys)
    assert rc == 0, err
    assert "ran 2 cells (1 were already recorded, 3 in all)" in out
    assert "line 2: corrupted record" in err
    now, _ = read_records(d, warn=None)
    assert sorted(r["cell"] for r in now) == sorted(json.loads(r)["cell"] for r in recs)
    added = [json.loads(x)["cell"] for x in lines(d / RECORDS)[2:]]
    assert sorted(added) == sorted([gone, broken])
    assert "Incomplete" not in (d / "report.md").read_text()


def test_interrupted_run_resumes_only_missing_cells(tmp_path, capsys):
    """Kill a real rq4 smoke run (cells of a few seconds each) after its first record,
    then rerun: only the cells without a record run, none twice."""
    d = tmp_path / "rq4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", CLI, "experiment", "run", "rq4", "--preset", "smoke",
                             "--output-dir", str(d)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            # a shell's background job starts with SIGINT ignored, and a child inherits
                            # that: the child gets the default disposition (Python's KeyboardInterrupt)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (d / RECORDS).exists() and lines(d / RECORDS):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out[-2000:]
    done_before = [json.loads(x)["cell"] for x in lines(d / RECORDS)]
    assert 1 <= len(done_before) < 3
    rc, out, err = run(["experiment", "run", "rq4", "--preset", "smoke", "--output-dir", d], capsys)
    assert rc == 0, err
    assert f"ran {3 - len(done_before)} cells ({len(done_before)} were already recorded, 3 in all)" in out
    cells = [json.loads(x)["cell"] for x in lines(d / RECORDS)]
    assert len(cells) == len(set(cells)) == 3
    assert cells[: len(done_before)] == done_before
    report = (d / "report.md").read_text()
    assert "rq4_limit.png" in report and "rq4_training.png" in report and "## Verdict" in report


def test_rq3_smoke(tmp_path, capsys):
    d = tmp_path / "rq3"
    rc, out, err = run(["experiment", "run", "rq3", "--preset", "smoke", "--output-dir", d], capsys)
    assert rc == 0, err
    recs, _ = read_records(d)
    assert len(recs) == 6
    assert all(not r["result"].get("failed") for r in recs), [r["result"] for r in recs]
    control = [r for r in recs if r["config"].get("part") == "control"]
    assert len(control) == 1 and control[0]["result"]["final_return"] > 0 and control[0]["result"]["eta"]
    dual = next(r for r in recs if r["config"].get("part") == "dual")["result"]
    assert set(dual["scales"]) == {"0.1", "1", "10"}
    recs = [r for r in recs if r not in control and r["config"].get("part") != "dual"]
    scales = {r["config"]["scale"] for r in recs}
    assert scales == {0.1, 10.0}
    etas = {r["config"].get("eta") for r in recs if r["config"]["mode"] == "fixed"}
    assert etas == {0.3}
    # a fixed eta stays put in the run's own metrics; the adaptive one moves
    for r in recs:
        curve = [v for _, v in r["result"]["curves"]["estep/eta"]]
        if r["config"]["mode"] == "fixed":
            assert curve and all(abs(v - 0.3) < 1e-6 for v in curve)
    report = (d / "report.md").read_text()
    assert "rq3_scale.png" in report and "Collapse rate" in report and "Control contrast" in report


def test_ray_runs_the_cells(rq1_dir, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    d = tmp_path / "rq1"
    shutil.copytree(rq1_dir, d)
    (d / RECORDS).unlink()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(sys.path), "EMRL_PROGRESS": "0"}})
    try:
        rc, out, err = run(["experiment", "run", "rq1", "--preset", "smoke", "--output-dir", d, "--ray", "local"],
                           capsys)
    finally:
        ray.shutdown()
    assert rc == 0, err
    assert "ran 3 cells (0 were already recorded, 3 in all)" in out
    assert (d / "report.md").exists()


# ---------------------------------------------------------------------------- bad input


def test_unknown_experiment_lists_the_known_ones(tmp_path, capsys):
    rc, _, err = run(["experiment", "run", "rq9", "--preset", "smoke", "--output-dir", tmp_path / "x"], capsys)
    assert rc == 2
    assert "unknown experiment 'rq9'" in err and all(n in err for n in ("rq1,", "rq3,", "rq4"))
    assert not (tmp_path / "x").exists()


def test_unknown_preset_lists_the_known_ones(tmp_path, capsys):
    rc, _, err = run(["experiment", "run", "rq1", "--preset", "laptop", "--output-dir", tmp_path / "x"], capsys)
    assert rc == 2
    assert "unknown preset 'laptop'" in err and "smoke, cpu, gpu" in err


def test_directory_of_another_experiment_is_refused(rq1_dir, tmp_path, capsys):
    d = tmp_path / "rq1"
    shutil.copytree(rq1_dir, d)
    before = (d / RECORDS).read_bytes()
    rc, _, err = run(["experiment", "run", "rq4", "--preset", "smoke", "--output-dir", d], capsys)
    assert rc == 2
    assert "holds records of experiment 'rq1', not 'rq4'" in err and "--overwrite" in err
    rc, _, err = run(["experiment", "run", "rq1", "--preset", "cpu", "--output-dir", d], capsys)
    assert rc == 2
    assert "preset 'smoke', not 'cpu'" in err
    assert (d / RECORDS).read_bytes() == before


def test_report_without_records(tmp_path, capsys):
    rc, _, err = run(["experiment", "report", tmp_path], capsys)
    assert rc == 2 and "nothing to report" in err
    (tmp_path / META).write_text(json.dumps({"experiment": "rq1", "preset": "smoke", "params": {}, "seeds": 1}))
    (tmp_path / RECORDS).write_text("{not json\n")
    rc, _, err = run(["experiment", "report", tmp_path], capsys)
    assert rc == 2 and f"no valid record in {RECORDS}" in err
    assert "line 1: corrupted record" in err
    rc, _, err = run(["experiment", "report", tmp_path / "missing"], capsys)
    assert rc == 2 and "no such directory" in err


def test_non_experiment_directory_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    rc, _, err = run(["experiment", "run", "rq1", "--preset", "smoke", "--output-dir", tmp_path], capsys)
    assert rc == 2 and "holds no emrl experiment" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("name", ["rq1", "rq3", "rq4"])
def test_committed_cpu_reports_regenerate_from_their_records(name, tmp_path):
    """docs/experiments/NAME holds the cpu preset's records; its report.md is what
    `emrl experiment report` makes of them today (regenerate it after changing a report)."""
    from emrl.experiments.framework import write_report

    src = Path(__file__).resolve().parents[2] / "docs" / "experiments" / name
    d = tmp_path / name
    shutil.copytree(src, d)
    meta = json.loads((d / META).read_text())
    assert meta["preset"] == "cpu" and meta["seeds"] >= 3
    write_report(d)
    assert (d / "report.md").read_text() == (src / "report.md").read_text()
    assert sorted(p.name for p in d.glob("*.png")) == sorted(p.name for p in src.glob("*.png"))
