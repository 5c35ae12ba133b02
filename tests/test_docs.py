"""The documentation site: it builds with ``mkdocs build --strict``, every "spec §N" the code
cites has a section, the CLI reference covers every config field, and every tutorial code
block marked ``<!-- test: run -->`` runs."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_MARK = "<!-- test: run -->"
BLOCK = re.compile(re.escape(RUN_MARK) + r"\s*\n```python\n(.*?)\n```", re.S)


def _hooks():
    spec = importlib.util.spec_from_file_location("emrl_docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    spec_page = (tmp_path / "site" / "concepts" / "specification" / "index.html").read_text()
    assert 'id="spec-6"' in spec_page and "arithmatex" in spec_page
    api_page = (tmp_path / "site" / "reference" / "python-api" / "index.html").read_text()
    assert "VMPOTrainer" in api_page and "save_model" in api_page
    assert "--report-to" in (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()


def test_every_spec_section_the_code_cites_has_a_heading():
    cited = set()
    for path in (ROOT / "src").rglob("*.py"):
        cited |= {int(n) for n in re.findall(r"spec §(\d+)", path.read_text())}
    page = (DOCS / "concepts" / "specification.md").read_text()
    headed = {int(n) for n in re.findall(r"^## §(\d+) .*\{#spec-\1\}$", page, re.M)}
    assert cited and cited <= headed, f"cited but without a section: {sorted(cited - headed)}"
    assert '<a id="spec-5-eq-1"></a>' in page  # "spec §5 eq. 1"


def test_cli_reference_lists_every_config_field_with_its_default():
    from emrl.control.config import ControlConfig
    from emrl.lm.train_config import RLConfig, SFTConfig

    md = _hooks().cli_reference_markdown()
    for title, cls in (("emrl lm sft", SFTConfig), ("emrl lm train", RLConfig),
                       ("emrl control train", ControlConfig)):
        section = md.split(f"## `{title}`", 1)[1].split("\n## ", 1)[0]
        for f in dataclasses.fields(cls):
            row = next((line for line in section.splitlines()
                        if line.startswith(f"| `--{f.name.replace('_', '-')}`")), None)
            assert row is not None, f"{title}: no row for {f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert repr(default).replace("|", "\\|") in row, (f.name, row)


def test_docs_name_nothing_outside_the_repository():
    texts = [p.read_text() for p in DOCS.rglob("*") if p.suffix in (".md", ".py", ".js")]
    texts.append((ROOT / "mkdocs.yml").read_text())
    for text in texts:
        for word in ("shared/", "steering", "em-formulations", "DESIGN.md"):
            assert word not in text, word


TUTORIALS = sorted(p for p in DOCS.rglob("*.md") if RUN_MARK in p.read_text())


def test_tutorials_have_runnable_blocks():
    names = {p.name for p in TUTORIALS}
    assert {"own-model.md", "messages.md", "memory-agent.md", "trackers.md"} <= names
    for page in TUTORIALS:
        assert page.read_text().count(RUN_MARK) == len(BLOCK.findall(page.read_text())), page


@pytest.mark.parametrize("page", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_code_runs(page, tmp_path, monkeypatch, capsys):
    """The page's marked blocks, in order, in one namespace, in a fresh directory."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"tutorial_{page.stem.replace('-', '_')}"}
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)  # noqa: S102
    out = capsys.readouterr().out
    assert out.strip(), "the tutorial printed nothing"
