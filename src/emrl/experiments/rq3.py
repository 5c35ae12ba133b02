"""RQ3: adaptive temperature against fixed temperature under reward scaling (spec §2 question 3, §6).

Training runs of V-MPO (``emrl lm train --algo vmpo``, the shipped defaults otherwise)
from one shared SFT start model on the default arithmetic task, with the verifier's
reward multiplied by a scale c ∈ {0.1, 1, 10} (``--reward-weights c``) or shifted by a
constant (a second reward function, :func:`constant_one`, weighted by the shift). Each
transform is trained with a fixed η on a grid (``--no-adaptive-temperature
--eta-init η``) and with the adaptive dual at several ε_η (``--eps-eta``). Measured per
run: final held-out accuracy, the E-step's effective sample size and weight entropy
over training, the realised KL per update, the temperature η, and whether it collapsed
(failed, or lost held-out accuracy) — the question being whether the adaptive dual is
invariant to the reward's scale where the best fixed η moves with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "rq3"
TITLE = "adaptive against fixed temperature under reward scaling"
QUESTION = ("Does adaptive temperature optimization in the E-step provide a practical stability advantage over "
            "fixed-temperature weighting at LLM scale?")
SUMMARY = "V-MPO with fixed η (grid) vs the adaptive η dual, rewards scaled ×0.1/×1/×10 and shifted"


def constant_one(prompts, completions, **columns) -> list[float]:
    """A reward of 1 for every completion (TRL's signature): weighted by ``s`` it shifts
    the reward by ``s``."""
    return [1.0 for _ in completions]


_COMMON = {"scales": [0.1, 1.0, 10.0], "shift": 1.0, "fixed_etas": [0.03, 0.3, 3.0], "eps_etas": [0.1, 1.0],
           "collapse_drop": 0.05, "control_env": "CartPole-v1", "control_scales": [0.1, 1.0, 10.0],
           "control_steps": 20000}
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {**_COMMON, "seeds": 1, "model": "tiny", "sft_steps": 20, "sft_eval_prompts": 10, "scales": [0.1, 10.0], "shift": None,
              "fixed_etas": [0.3],
              "eps_etas": [0.1], "max_steps": 2, "batch_size": 4, "eval_prompts": 10, "train_flags": [],
              "control_scales": [10.0], "control_steps": 1024},
    "cpu": {**_COMMON, "seeds": 3, "model": "tiny", "sft_steps": 600, "max_steps": 24, "batch_size": 16,
            "eval_prompts": 100, "train_flags": ["--eps-alpha", "0.02"]},
    "gpu": {**_COMMON, "seeds": 3, "model": "Qwen/Qwen2.5-0.5B-Instruct", "sft_steps": 0, "max_steps": 200,
            "batch_size": 32, "eval_prompts": 200, "train_flags": ["--mixed-precision", "bf16"],
            "control_steps": 200000},
}


def _transforms(p: dict[str, Any]) -> list[dict[str, float]]:
    shifted = [{"scale": 1.0, "shift": float(p["shift"])}] if p.get("shift") else []
    return [{"scale": float(c), "shift": 0.0} for c in p["scales"]] + shifted


def _methods(p: dict[str, Any], shifted: bool) -> list[dict[str, Any]]:
    fixed = [{"mode": "fixed", "eta": float(e)} for e in p["fixed_etas"]]
    adaptive = [{"mode": "adaptive", "eps_eta": float(e)} for e in p["eps_etas"]]
    if shifted:  # the shift: the middle fixed η and the first ε_η only (the grid's cost)
        return [fixed[len(fixed) // 2], adaptive[0]]
    return fixed + adaptive


def _method_label(m: dict[str, Any]) -> str:
    return f"fixed η = {m['eta']:g}" if m["mode"] == "fixed" else f"adaptive ε_η = {m['eps_eta']:g}"


def _transform_label(t: dict[str, Any]) -> str:
    return f"r × {t['scale']:g}" + (f" + {t['shift']:g}" if t["shift"] else "")


def cells(params: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for c in params.get("control_scales", []):
        for s in seeds:
            out.append({"key": f"control-x{c:g}-s{s}", "config": {"part": "control", "scale": float(c)}, "seed": s})
    for tr in _transforms(params):
        for m in _methods(params, bool(tr["shift"])):
            cfg = {**tr, **m}
            key = f"x{tr['scale']:g}" + (f"+{tr['shift']:g}" if tr["shift"] else "") + (
                f"-fixed{m['eta']:g}" if m["mode"] == "fixed" else f"-adapt{m['eps_eta']:g}")
            for s in seeds:
                out.append({"key": f"{key}-s{s}", "config": cfg, "seed": s})
    return out


def setup(params: dict[str, Any], shared_dir: Path) -> dict[str, Any]:
    from emrl.experiments import lmkit

    return lmkit.start_models(shared_dir, model=params["model"], sft_steps=params["sft_steps"],
                              eval_prompts=params.get("sft_eval_prompts", 100))


def _control_cell(p: dict[str, Any], c: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
    """Adaptive-η V-MPO on a control task with the rewards scaled by c (``--reward-scale``)."""
    from emrl.errors import EmrlError
    from emrl.experiments import lmkit

    run_dir = workdir / "run"
    try:
        lmkit.run_cli(["control", "train", "--algo", "vmpo", "--env", p["control_env"], "--total-steps",
                       str(p["control_steps"]), "--reward-scale", f"{c['scale']:g}", "--seed", str(seed),
                       "--num-threads", "1", "--output-dir", str(run_dir)], workdir / "run.log")
    except EmrlError as e:
        return {"failed": True, "error": str(e)[-400:]}
    rows = lmkit.read_run(run_dir)["metrics"]
    evals = [r["eval/return"] for r in rows if r.get("eval/return") is not None]
    curve = [[r["step"], r["estep/eta"]] for r in rows if r.get("estep/eta") is not None]
    ess = [r["estep/ess"] for r in rows if r.get("estep/ess") is not None]
    return {"failed": False, "final_return": evals[-1] if evals else None, "eta": curve,
            "ess": sum(ess) / len(ess) if ess else None}


def run_cell(cell: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    from emrl.experiments import lmkit

    p, c = ctx["params"], cell["config"]
    if c.get("part") == "control":
        return _control_cell(p, c, cell["seed"], Path(ctx["workdir"]))
    flags = ["--max-steps", str(p["max_steps"]), "--batch-size", str(p["batch_size"]), "--eval-every", "0",
             "--eval-num-prompts", str(p["eval_prompts"]), "--eval-samples", "0", *p["train_flags"]]
    if c["shift"]:
        flags += ["--reward-funcs", f"verifier,{__name__}:constant_one",
                  "--reward-weights", f"{c['scale']:g},{c['shift']:g}"]
    else:
        flags += ["--reward-funcs", "verifier", "--reward-weights", f"{c['scale']:g}"]
    if c["mode"] == "fixed":
        flags += ["--no-adaptive-temperature", "--eta-init", f"{c['eta']:g}"]
    else:
        flags += ["--adaptive-temperature", "--eps-eta", f"{c['eps_eta']:g}"]
    return lmkit.rl_cell(Path(ctx["workdir"]), ctx["shared"]["sft"], "vmpo", flags, seed=cell["seed"])


def _mean_curve(res: dict[str, Any], key: str) -> float | None:
    pts = [v for _, v in res.get("curves", {}).get(key, []) if v is not None]
    return float(sum(pts) / len(pts)) if pts else None


def _summary(res: dict[str, Any], drop: float) -> dict[str, Any]:
    if res.get("failed"):
        return {"failed": True, "collapsed": True}
    ess = _mean_curve(res, "estep/ess")
    seqs = _mean_curve(res, "mstep/sequences")
    start, final = res.get("start_accuracy"), res.get("final_accuracy")
    collapsed = bool(res.get("nonfinite_steps", 0) > 0 or
                     (start is not None and final is not None and final < start - drop))
    eta = res.get("curves", {}).get("estep/eta", [])
    return {"failed": False, "collapsed": collapsed, "final_accuracy": final, "gain": None if start is None else final - start,
            "ess": ess, "ess_fraction": None if not ess or not seqs else ess / seqs,
            "entropy": _mean_curve(res, "estep/weight_entropy"), "kl": _mean_curve(res, "mstep/kl"),
            "eta_final": eta[-1][1] if eta else None}


def report(rep, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import numpy as np

    from emrl.experiments.analysis import compare, estimate
    from emrl.report import format_value

    p = meta["params"]
    drop = float(p["collapse_drop"])
    control = [r for r in records if r["config"].get("part") == "control"]
    records = [r for r in records if r["config"].get("part") != "control"]
    rep.heading("What was run")
    rep.paragraph(
        f"V-MPO from one SFT start model (`{p['model']}`, {p['sft_steps']} SFT updates) on the default arithmetic "
        f"task: {p['max_steps']} updates of {p['batch_size']} prompts × 8 samples per run (a small scale: the "
        f"question at CPU scale, not at LLM scale), held-out greedy accuracy on {p['eval_prompts']} prompts; extra "
        f"flags `{' '.join(p['train_flags']) or '(none)'}`, all else the shipped defaults (KL trust region, top-k ρ, "
        f"advantage threshold). Rewards: the verifier's 0/1 score × c for c ∈ {{{', '.join(f'{c:g}' for c in p['scales'])}}}, "
        + (f"and × 1 + {p['shift']:g}" if p.get("shift") else "no shift") + ". A run **collapses** if it fails or ends with held-out accuracy more than "
        f"{drop:g} below its start. ESS and weight entropy are means over updates of the E-step's; KL is the realised "
        "KL(π_old ‖ π_new) per token per update.")
    summ: dict[tuple[str, str], list[tuple[int, dict[str, Any]]]] = {}
    for r in records:
        c = r["config"]
        m = {k: c[k] for k in ("mode", "eta", "eps_eta") if k in c}
        summ.setdefault((_transform_label(c), _method_label(m)), []).append((r["seed"], _summary(r["result"], drop)))
    trs = [_transform_label(t) for t in _transforms(p)]
    meths = [_method_label(m) for m in _methods(p, False)]
    rows = []
    for tl in trs:
        for ml in meths:
            runs = summ.get((tl, ml), [])
            if not runs:
                continue
            ok = [s for _, s in runs if not s["failed"]]

            def est(key, ok=ok):
                vals = [s[key] for s in ok if s.get(key) is not None]
                return estimate(vals).text() if vals else "–"

            rows.append([tl, ml, f"{sum(s['collapsed'] for _, s in runs)}/{len(runs)}", est("final_accuracy"),
                         est("ess_fraction"), est("entropy"), est("kl"), est("eta_final")])
    rep.heading("Results")
    rep.table(["reward", "temperature", "collapsed", "final held-out accuracy", "ESS / selected",
               "weight entropy (nats)", "realised KL per update (nats/token)", "final η"], rows,
              align=["l"] * 8, caption="mean [95% bootstrap interval] over seeds")

    # best fixed eta per transform, and the invariance question
    verdicts = []

    def acc_by_seed(tl, ml):
        return {s: x["final_accuracy"] for s, x in summ.get((tl, ml), []) if not x["failed"]}

    fixed = [m for m in meths if m.startswith("fixed")]
    adapt = [m for m in meths if m.startswith("adaptive")]
    best_fixed = {}
    for tl in trs:
        means = {m: float(np.mean(list(acc_by_seed(tl, m).values()))) for m in fixed if acc_by_seed(tl, m)}
        if means:
            best_fixed[tl] = max(means, key=lambda m: (means[m], -fixed.index(m)))
    if best_fixed:
        moved = len(set(best_fixed.values())) > 1
        verdicts.append("Best fixed η by mean final accuracy: " + "; ".join(f"{tl}: {m}" for tl, m in best_fixed.items())
                        + (" — the best fixed η moves with the reward's scale." if moved else
                           " — the same fixed η is best at every reward transform here."))
    for am in adapt:
        for tl, bf in best_fixed.items():
            a, b = acc_by_seed(tl, am), acc_by_seed(tl, bf)
            if a and b:
                verdicts.append(f"{tl}: " + compare(am, a, f"best fixed ({bf})", b, "final held-out accuracy"))
        # scale invariance of the adaptive arm: its final eta and ESS across scales
        etas = {tl: [x["eta_final"] for _, x in summ.get((tl, am), []) if not x["failed"] and x["eta_final"]]
                for tl in trs}
        ess = {tl: [x["ess_fraction"] for _, x in summ.get((tl, am), []) if not x["failed"] and x["ess_fraction"]]
               for tl in trs}
        scaled = [tl for tl in trs if "+" not in tl and etas.get(tl)]
        if len(scaled) >= 2:
            parts = [f"{tl}: η {estimate(etas[tl]).text()}, ESS/selected "
                     f"{estimate(ess[tl]).text() if ess.get(tl) else '–'}" for tl in scaled]
            verdicts.append(f"{am} across reward scales: " + "; ".join(parts) +
                            " (η tracking the scale with an unchanged ESS is the invariance the dual promises).")
    coll_f = sum(x["collapsed"] for (tl, ml), runs in summ.items() if ml in fixed for _, x in runs)
    n_f = sum(len(runs) for (tl, ml), runs in summ.items() if ml in fixed)
    coll_a = sum(x["collapsed"] for (tl, ml), runs in summ.items() if ml in adapt for _, x in runs)
    n_a = sum(len(runs) for (tl, ml), runs in summ.items() if ml in adapt)
    if n_f and n_a:
        verdicts.append(f"Collapse rate: fixed η {coll_f}/{n_f} ({100 * coll_f / n_f:.0f}%), adaptive η {coll_a}/{n_a} "
                        f"({100 * coll_a / n_a:.0f}%).")

    # figures: final accuracy vs reward scale per method; ESS fraction vs scale
    scales = [t for t in _transforms(p) if not t["shift"]]
    fig, axes = rep.new_figure(ncols=2)
    for key, ax, ylab in (("final_accuracy", axes[0], "final held-out accuracy (fraction)"),
                          ("ess_fraction", axes[1], "ESS / selected samples (fraction)")):
        for ml in meths:
            xs, ys, lo, hi = [], [], [], []
            for t in scales:
                vals = [x[key] for _, x in summ.get((_transform_label(t), ml), []) if not x["failed"]
                        and x.get(key) is not None]
                if vals:
                    e = estimate(vals)
                    xs.append(t["scale"])
                    ys.append(e.mean)
                    lo.append(e.mean - e.lo)
                    hi.append(e.hi - e.mean)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=ml,
                            ls="-" if ml.startswith("adaptive") else ":")
        ax.set_xscale("log")
        ax.set_xlabel("reward scale c (reward = c × verifier score)")
        ax.set_ylabel(ylab)
        ax.legend(fontsize=6)
    rep.figure(fig, "rq3_scale.png", "Final held-out accuracy and the E-step's effective sample size against the "
               "reward's scale, per temperature rule (mean with 95% bootstrap interval over seeds).")
    fig, ax = rep.new_figure()
    for t in scales:
        for ml in adapt:
            runs = [r for r in records if _transform_label(r["config"]) == _transform_label(t)
                    and r["config"]["mode"] == "adaptive" and _method_label(r["config"]) == ml
                    and not r["result"].get("failed")]
            for i, r in enumerate(runs):
                pts = r["result"]["curves"].get("estep/eta", [])
                if pts:
                    ax.plot([a for a, _ in pts], [b for _, b in pts], alpha=0.7,
                            label=f"{_transform_label(t)}, {ml}" if i == 0 else None)
    if ax.has_data():
        ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("temperature η (reward units)")
    ax.legend(fontsize=6)
    rep.figure(fig, "rq3_eta.png", "The adaptive temperature over training at each reward scale (one line per seed).")
    if control:
        rep.heading("Control contrast")
        rep.paragraph(
            f"Adaptive-η V-MPO (`emrl control train --algo vmpo`, the control defaults) on {p['control_env']} for "
            f"{p['control_steps']} environment steps, rewards × c (`--reward-scale`); the control side has no "
            "fixed-η switch, so this contrast asks only whether the adaptive dual absorbs the scale: the "
            "temperature should move with c while the return does not.")
        rows, ret_by = [], {}
        for c in p["control_scales"]:
            rs = [r for r in control if r["config"]["scale"] == float(c) and not r["result"].get("failed")]
            if not rs:
                continue
            ret_by[c] = {r["seed"]: r["result"]["final_return"] for r in rs if r["result"]["final_return"] is not None}
            etas = [r["result"]["eta"][-1][1] for r in rs if r["result"]["eta"]]
            rows.append([f"× {c:g}", f"{len(rs)}", estimate(list(ret_by[c].values())).text() if ret_by[c] else "–",
                         estimate(etas).text() if etas else "–",
                         estimate([r["result"]["ess"] for r in rs if r["result"]["ess"]]).text()])
        rep.table(["reward scale", "runs", "final evaluation return", "final η", "mean ESS"], rows,
                  align=["l"] * 5, caption="mean [95% bootstrap interval] over seeds")
        if 1.0 in ret_by:
            for c in p["control_scales"]:
                if c != 1.0 and ret_by.get(c):
                    verdicts.append(f"{p['control_env']}: " + compare(f"reward × {c:g}", ret_by[c], "reward × 1",
                                                                   ret_by[1.0], "final evaluation return"))
        fig, ax = rep.new_figure()
        for c in p["control_scales"]:
            rs = [r for r in control if r["config"]["scale"] == float(c) and not r["result"].get("failed")]
            for i, r in enumerate(rs):
                pts = r["result"]["eta"]
                ax.plot([a for a, _ in pts], [b for _, b in pts], alpha=0.7, label=f"reward × {c:g}" if i == 0 else None)
        if ax.has_data():
            ax.set_yscale("log")
        ax.set_xlabel("update")
        ax.set_ylabel("temperature η (reward units)")
        ax.legend(fontsize=7)
        rep.figure(fig, "rq3_control_eta.png", f"The adaptive temperature on {p['control_env']} at each reward scale "
                   "(one line per seed).")
    rep.heading("Verdict")
    rep.bullets(verdicts + [f"Scale: {format_value(float(p['max_steps']))} updates per run on a 2-core CPU — a "
                            "small-scale answer; the gpu preset runs the same grid on a real model."])
