"""The architecture's rules, checked on the source tree (no imports of the package):

1. no import cycle among the modules of ``src/emrl``;
2. no file under ``src/`` longer than 500 lines;
3. no logic repeated between the two loops: no run of six or more same-shape code lines
   (identifiers and literals normalised; see :func:`shape_lines` for what is not code)
   appears both under ``src/emrl/lm/`` and under ``src/emrl/control/``.

Which imports count (rule 1): every ``import`` / ``from ... import`` of an ``emrl``
module, at module level **and inside functions** (a lazy import only hides a cycle until
the function runs), except those under ``if TYPE_CHECKING:`` (never executed). An import
of ``emrl.a.b`` is an edge to ``emrl.a.b``; ``from emrl.a import b`` is an edge to
``emrl.a.b`` when that is a module, else to ``emrl.a``.
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "emrl"
MAX_LINES = 500
RUN = 6


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_pkg: bool, known: set[str]) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit_stmt(sub)
                continue
            visit_stmt(child)

    def visit_stmt(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "emrl":
                    out.add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "emrl":
                return
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
        visit(node)

    visit(tree)
    return {m for m in out if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    """``{module: emrl modules it imports}`` for every module of ``src/emrl``."""
    mods = _modules()
    known = set(mods)
    return {m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, p.name == "__init__.py", known)
            for m, p in mods.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return sorted(comps)


def long_files(root: Path = SRC) -> list[tuple[str, int]]:
    """``(path, lines)`` of the ``.py`` files under ``root`` longer than :data:`MAX_LINES`."""
    out = []
    for p in sorted(root.rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > MAX_LINES:
            out.append((str(p.relative_to(SRC.parent)), n))
    return out


_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
         tokenize.ENCODING, tokenize.ENDMARKER}


def shape_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, shape)`` of the lines of ``path`` that hold code: each token as its
    kind (identifiers -> ``N``, literals -> ``L``, keywords and operators as they are).
    Left out, as they are not logic: docstrings (a statement that is only a string),
    lines of closing brackets alone, blank and comment lines, imports, and annotated
    declarations (``name: type = ...``, e.g. the fields of the config dataclasses, which
    share names on purpose)."""
    by_line: dict[int, list[str]] = defaultdict(list)
    toks = list(tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline))
    for t in toks:
        if t.type in _SKIP:
            continue
        if t.type == tokenize.NAME:
            s = t.string if keyword.iskeyword(t.string) else "N"
        elif t.type in (tokenize.STRING, tokenize.NUMBER) or t.type >= getattr(tokenize, "FSTRING_START", 10**6):
            s = "L"
        else:
            s = t.string
        by_line[t.start[0]].append(s)
    out = []
    for ln in sorted(by_line):
        shape = " ".join(by_line[ln])
        if shape in ("L",) or all(c in ")]}:, " for c in shape):
            continue  # a docstring line / a line of closing brackets
        if shape.startswith(("import ", "from ", "N :")):
            continue  # imports and declarations (dataclass fields) are not logic
        # adjacent string pieces (implicit concatenation) are one literal
        while "L L" in shape:
            shape = shape.replace("L L", "L")
        out.append((ln, shape))
    return out


def repeated_runs(a_root: Path, b_root: Path, run: int = RUN) -> list[tuple[str, str]]:
    """``(place in a_root, place in b_root)`` of runs of ``run`` consecutive same-shape
    code lines found under both roots (one pair per matching run start)."""
    def windows(root: Path) -> dict[tuple[str, ...], str]:
        out: dict[tuple[str, ...], str] = {}
        for p in sorted(root.rglob("*.py")):
            lines = shape_lines(p)
            for i in range(len(lines) - run + 1):
                key = tuple(s for _, s in lines[i:i + run])
                out.setdefault(key, f"{p.relative_to(SRC.parent)}:{lines[i][0]}")
        return out

    wa, wb = windows(a_root), windows(b_root)
    return sorted((wa[k], wb[k]) for k in wa.keys() & wb.keys())


# ----------------------------------------------------------------------------- tests


def test_no_import_cycle_in_src_emrl():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (module-level and function-level imports): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_file_under_src_exceeds_500_lines():
    assert not long_files(), f"files over {MAX_LINES} lines: {long_files()}"


def test_no_logic_repeated_between_lm_and_control():
    runs = repeated_runs(PKG / "lm", PKG / "control")
    assert not runs, f"runs of {RUN} same-shape lines in both lm/ and control/: {runs[:20]}"


def test_the_checks_find_what_they_look_for(tmp_path):
    # the scans are not vacuous: a cycle, a long file and a repeated run are found
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "emrl.objectives.estep" in graph["emrl.objectives.duals"]  # an import is seen
    assert "emrl.checkpoint" in graph["emrl.config"]  # ... also inside a function
    body = "\n".join(f"def f{i}(x):\n    y = x + {i}\n    return y * 2\n" for i in range(3))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.py").write_text(body.replace("x", "u"))
    (tmp_path / "b" / "n.py").write_text("import os\n" + body)
    global SRC
    old, SRC = SRC, tmp_path
    try:
        assert repeated_runs(tmp_path / "a", tmp_path / "b")
        (tmp_path / "b" / "n.py").write_text("import os\n")
        assert not repeated_runs(tmp_path / "a", tmp_path / "b")
        (tmp_path / "big.py").write_text("x = 1\n" * (MAX_LINES + 1))
        assert [n for _, n in long_files(tmp_path)] == [MAX_LINES + 1]
    finally:
        SRC = old
