"""Issue 17 item 1-2: ``--help`` read by sections (option groups), choices and defaults
shown, value syntax explained, docstring markup rendered; one spelling ``--reward-funcs``."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from emrl.cli import main
from emrl.clihelp import EmrlArgumentParser, plain_text
from emrl.config import add_config_args, build_config, cfg_field, from_dict
from emrl.errors import ConfigError


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == 0
    return capsys.readouterr().out


def _sections(text: str) -> dict[str, list[str]]:
    """Section title -> the option flags listed in it (argparse's help layout)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            out[current] = []
        elif current is not None and re.match(r"  -", line):
            invocation = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
            out[current] += re.findall(r"(--[a-z0-9-]+)", invocation)
    return out


LM_TRAIN_SECTIONS = ["options", "model & data", "rollouts, reward & advantages", "optimisation",
                     "M-step & trust region", "evaluation", "logging & checkpoints",
                     "V-MPO (--algo vmpo)", "AWR (--algo awr)", "DAR (--algo dar)", "PPO (--algo ppo)",
                     "scale: LoRA, precision, memory, generation engine"]


def test_lm_train_help_is_grouped_with_choices_and_defaults(capsys):
    text = _help(capsys, "lm", "train", "--help")
    sections = _sections(text)
    assert [s for s in sections if not s.startswith("usage")] == LM_TRAIN_SECTIONS
    assert "--algo" in sections["options"] and "--output-dir" in sections["options"]
    assert "--model" in sections["model & data"] and "--task" in sections["model & data"]
    assert "--learning-rate" in sections["optimisation"]
    assert "--eps-alpha" in sections["M-step & trust region"]
    assert "--top-fraction" in sections["V-MPO (--algo vmpo)"]
    assert {"--dar-alpha", "--dar-beta"} <= set(sections["DAR (--algo dar)"])
    assert "--clip-eps" in sections["PPO (--algo ppo)"] and "--clip-eps" not in sections["DAR (--algo dar)"]
    assert "--reward-funcs" in sections["rollouts, reward & advantages"]
    flat = " ".join(text.split())
    assert "--algo {vmpo,awr,dar,ppo} algorithm (default: vmpo)" in flat
    assert "--baseline {group_mean,loo,value,batch_mean}" in flat
    assert "--reward-funcs STR,..." in flat
    assert "(default: 0.0003)" in flat and "(default: on)" in flat
    assert "Value syntax: lists are comma-separated" in flat
    assert text.splitlines()[0].startswith("usage: emrl lm train --output-dir DIR")
    # the old spelling is accepted but not listed
    assert "--reward-fns" not in text
    # the template help names the placeholders
    assert "{question}" in flat and "{prompt}" in flat and "{expression}" in flat


@pytest.mark.parametrize("order", ["algo-first", "help-first"])
def test_lm_train_help_for_one_algo_shows_only_what_applies(capsys, order):
    argv = ["lm", "train", "--algo", "dar", "--help"] if order == "algo-first" else \
        ["lm", "train", "--help", "--algo", "dar"]
    text = _help(capsys, *argv)
    sections = _sections(text)
    assert "DAR (--algo dar)" in sections
    for other in ("V-MPO (--algo vmpo)", "AWR (--algo awr)", "PPO (--algo ppo)"):
        assert other not in sections
    assert "--clip-eps" not in text and "--top-fraction" not in text
    assert "--learning-rate" in text and "--eps-alpha" in text  # shared sections stay
    assert "options of awr, ppo, vmpo are hidden" in " ".join(text.split())


def test_lm_sft_eval_demo_and_control_help(capsys):
    sft = _sections(_help(capsys, "lm", "sft", "--help"))
    assert "--target" in sft["SFT target (E-step)"] and "PPO (--algo ppo)" not in sft
    text = _help(capsys, "lm", "eval", "--help")
    assert "``" not in text and "::" not in text and ":class:" not in text
    assert "eval-<timestamp>.json" in text and "never replaces a training run's own eval.json" in \
        " ".join(text.split())
    ev = _sections(text)
    assert "--reward-funcs" in ev["reward"] and "--output" in ev["output & runtime"]
    demo = " ".join(_help(capsys, "demo", "--help").split())
    assert "--quick" in demo and "--sft-max-steps N" in demo and "--rl-max-steps N" in demo
    ctrl = _sections(_help(capsys, "control", "train", "--help"))
    assert "--clip-eps" in ctrl["PPO (--algo ppo)"] and "--eps-eta" in ctrl["V-MPO (--algo vmpo)"]
    assert "--core" in ctrl["core / network"] and "--env" in ctrl["environment & run"]
    assert "PPO (--algo ppo)" not in _sections(_help(capsys, "control", "train", "--algo", "vmpo", "--help"))
    assert "--core {mlp,lstm,trxl,trxl-i,gtrxl}" in " ".join(_help(capsys, "control", "train", "--help").split())


def test_plain_text_renders_docstring_markup():
    doc = """``emrl lm eval``: see :class:`~emrl.lm.tasks.Task` and :func:`load_task`.

    ::

        emrl lm eval --model DIR

    Writes ``eval.json``::

        {"accuracy": 0.5}
    """
    text = plain_text(doc)
    assert "``" not in text and "::" not in text and ":class:" not in text
    assert text.startswith("emrl lm eval: see Task and load_task.")
    assert "    emrl lm eval --model DIR" in text  # the example block keeps its indent
    assert "Writes eval.json:" in text


@dataclass
class _Cfg:
    HELP_GROUPS = {"a": "first section", "b": "second section"}

    names: list[str] = cfg_field([], "names", group="b", aliases=("old_names",))
    sizes: dict = cfg_field({}, "sizes", group="a")
    mode: str = cfg_field("x", "mode", choices=["x", "y"])
    flag: bool = cfg_field(False, "flag", group="a")


def test_aliases_on_the_command_line_and_in_yaml(tmp_path):
    p = EmrlArgumentParser(prog="t")
    add_config_args(p, _Cfg)
    assert build_config(_Cfg, p.parse_args(["--old-names", "a:f,b:g"])).names == ["a:f", "b:g"]
    assert build_config(_Cfg, p.parse_args(["--names", ""])).names == []
    assert build_config(_Cfg, p.parse_args(["--sizes", "{d: 8, n: 2}"])).sizes == {"d": 8, "n": 2}
    with pytest.raises(SystemExit):
        p.parse_args(["--sizes", "[1, 2]"])
    y = tmp_path / "c.yaml"
    y.write_text("old_names: [m:f]\n")
    assert build_config(_Cfg, p.parse_args(["--config", str(y)])).names == ["m:f"]
    with pytest.raises(ConfigError, match="both 'old_names'"):
        from_dict(_Cfg, {"old_names": ["a:b"], "names": ["c:d"]})
    sections = _sections(p.format_help())
    assert list(sections) == ["options", "first section", "second section"]
    assert sections["first section"] == ["--sizes", "--flag", "--no-flag"]


def test_lm_train_reward_fns_alias(tmp_path):
    from emrl.lm.train_config import RLConfig

    assert from_dict(RLConfig, {"reward_fns": ["m:f"]}).reward_funcs == ["m:f"]  # old config.yaml
    p = EmrlArgumentParser(prog="t")
    add_config_args(p, RLConfig)
    assert build_config(RLConfig, p.parse_args(["--reward-fns", "m:f"])).reward_funcs == ["m:f"]
    with pytest.raises(ConfigError, match="reward_weights has 2 entries but reward_funcs has 1"):
        from_dict(RLConfig, {"reward_funcs": ["m:f"], "reward_weights": [1, 2]}).validate()
