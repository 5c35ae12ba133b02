"""RQ4: the DAR closed-form target against the V-MPO target (spec §2 question 4, §6, §7).

Two parts:

* **weights on real rollouts**: completions of the default arithmetic task sampled from
  π_t (the tiny SFT model moved by a few V-MPO updates) with π_ref the SFT model. With
  ``t = α + β`` fixed, DAR's importance weights
  ``w ∝ (π_ref/π_t)^{α/t} exp(A/t)`` are compared with V-MPO's at ``η = t`` and ρ = 1
  (``softmax(A/t)``) as ``α/t → 0``: total variation, maximum difference and KL, on a
  log–log scale with the fitted slope; and at ``π_ref = π_t`` exactly, where the two
  coincide for every α.
* **training runs**: ``emrl lm train --algo dar`` at several α with ``β = t − α``
  against V-MPO at a fixed ``η = t`` (ρ = 1, no advantage threshold: DAR's α → 0 limit),
  from the same SFT start model: final held-out accuracy and the final policy's KL to
  the start model (the reference), so what the reference term buys is measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "rq4"
TITLE = "DAR against V-MPO: the closed-form targets and their limits"
QUESTION = ("How does the DAR closed-form target relate to the V-MPO target, and under which limits are they "
            "equivalent?")
SUMMARY = "DAR vs V-MPO weights as α/(α+β) → 0 and at π_ref = π_t; DAR at several α vs V-MPO at η = α+β"

_COMMON = {"t": 1.0, "alpha_frac_grid": [0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 1e-3, 1e-4],
           "train_alphas": [0.1, 0.5, 0.9]}
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {**_COMMON, "seeds": 1, "model": "tiny", "sft_steps": 20, "sft_eval_prompts": 10, "rl_steps": 2, "num_prompts": 6, "k": 4,
              "train_alphas": [0.5], "max_steps": 2, "batch_size": 4, "eval_prompts": 10, "kl_prompts": 4,
              "train_flags": ["--eps-alpha", "0.02"]},
    "cpu": {**_COMMON, "seeds": 3, "model": "tiny", "sft_steps": 600, "rl_steps": 30, "num_prompts": 64, "k": 8,
            "max_steps": 40, "batch_size": 16, "eval_prompts": 100, "kl_prompts": 32,
            "train_flags": ["--eps-alpha", "0.02"]},
    "gpu": {**_COMMON, "seeds": 3, "model": "Qwen/Qwen2.5-0.5B-Instruct", "sft_steps": 0, "rl_steps": 20,
            "num_prompts": 128, "k": 8, "max_steps": 200, "batch_size": 32, "eval_prompts": 200,
            "kl_prompts": 64, "train_flags": ["--mixed-precision", "bf16"]},
}


def _arms(params: dict[str, Any]) -> list[dict[str, Any]]:
    t = float(params["t"])
    arms = [{"part": "train", "algo": "dar", "alpha": a * t, "beta": (1 - a) * t} for a in params["train_alphas"]]
    arms.append({"part": "train", "algo": "vmpo", "eta": t})
    return arms


def _arm_label(cfg: dict[str, Any]) -> str:
    if cfg["algo"] == "vmpo":
        return f"V-MPO η = {cfg['eta']:g}"
    return f"DAR α = {cfg['alpha']:g}, β = {cfg['beta']:g}"


def cells(params: dict[str, Any], seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for s in seeds:
        out.append({"key": f"weights-s{s}", "config": {"part": "weights"}, "seed": s})
    for arm in _arms(params):
        name = "vmpo" if arm["algo"] == "vmpo" else f"dar-a{arm['alpha']:g}"
        for s in seeds:
            out.append({"key": f"{name}-s{s}", "config": arm, "seed": s})
    return out


def setup(params: dict[str, Any], shared_dir: Path) -> dict[str, Any]:
    from emrl.experiments import lmkit

    return lmkit.start_models(shared_dir, model=params["model"], sft_steps=params["sft_steps"],
                              eval_prompts=params.get("sft_eval_prompts", 100),
                              rl_steps=params["rl_steps"], rl_flags=["--eps-alpha", "0.05"])


def run_cell(cell: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    p, cfg = ctx["params"], cell["config"]
    if cfg["part"] == "weights":
        return _weights(p, ctx["shared"], cell["seed"])
    from emrl.experiments import lmkit

    common = ["--max-steps", str(p["max_steps"]), "--batch-size", str(p["batch_size"]), "--eval-every", "0",
              "--eval-num-prompts", str(p["eval_prompts"]), "--eval-samples", "0", *p["train_flags"]]
    if cfg["algo"] == "dar":
        flags = ["--dar-alpha", str(cfg["alpha"]), "--dar-beta", str(cfg["beta"])]
    else:
        flags = ["--no-adaptive-temperature", "--eta-init", str(cfg["eta"]), "--top-fraction", "1.0",
                 "--min-advantage", "none"]
    return lmkit.rl_cell(Path(ctx["workdir"]), ctx["shared"]["sft"], cfg["algo"], common + flags,
                         seed=cell["seed"], kl_prompts=p["kl_prompts"])


def _distances(w_a, w_b) -> dict[str, float]:
    import torch

    tv = 0.5 * float((w_a - w_b).abs().sum())
    pos = w_b > 0
    kl = float((w_b[pos] * (torch.log(w_b[pos]) - torch.log(w_a[pos].clamp_min(1e-300)))).sum())
    return {"tv": tv, "max_abs": float((w_a - w_b).abs().max()), "kl": max(kl, 0.0)}


def _weights(p: dict[str, Any], shared: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch

    import emrl.objectives as O
    from emrl.experiments import lmkit

    torch.manual_seed(seed)
    model, tok = lmkit.load(shared["moved"])
    ref, _ = lmkit.load(shared["sft"])
    prompts, items, ds = lmkit.task_items(p["num_prompts"], seed=1000 + seed)
    k, t = p["k"], float(p["t"])
    batch = lmkit.rollouts(model, tok, prompts, items, ds, k=k, seed=seed)
    adv = O.group_advantages(batch["rewards"], k)
    logp = lmkit.sequence_logprobs(model, batch)
    logp_ref = lmkit.sequence_logprobs(ref, batch)
    w_v, _ = O.vmpo_weights(adv, t, top_fraction=1.0)
    curve, same = [], []
    for frac in p["alpha_frac_grid"]:
        a = frac * t
        w_d, _ = O.dar_weights(logp_ref, logp, adv, a, t - a, clip_max=None)
        curve.append({"frac": frac, **_distances(w_d, w_v)})
        w_s, _ = O.dar_weights(logp, logp, adv, a, t - a, clip_max=None)  # π_ref = π_t exactly
        same.append({"frac": frac, **_distances(w_s, w_v)})
    lr = logp_ref - logp
    return {"curve": curve, "same_policy": same, "reward_mean": float(batch["rewards"].mean()),
            "n_samples": int(adv.numel()), "logratio_std": float(lr.std()),
            "logratio_abs_max": float(lr.abs().max()), "seq_kl_ref_mc": float((-lr).mean())}


def report(rep, records: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    import numpy as np

    from emrl.experiments.analysis import compare, estimate, loglog_slope
    from emrl.report import format_value

    p = meta["params"]
    t = float(p["t"])
    verdicts = []
    ws = [r for r in records if r["config"]["part"] == "weights"]
    if ws:
        rep.heading("DAR and V-MPO weights on real rollouts")
        res = [r["result"] for r in ws]
        rep.paragraph(
            f"π_t: `{p['model']}` after {p['sft_steps']} SFT and {p['rl_steps']} V-MPO updates; π_ref: the SFT model. "
            f"{p['num_prompts']} prompts × k = {p['k']} samples per seed ({len(res)} seeds), group-mean advantages of "
            f"the verifier's reward (mean reward {format_value(float(np.mean([x['reward_mean'] for x in res])))}); "
            f"log π_ref − log π_t per completion: std {format_value(float(np.mean([x['logratio_std'] for x in res])))}, "
            f"max |·| {format_value(max(x['logratio_abs_max'] for x in res))}. t = α + β = {t:g}; V-MPO at η = t, "
            "ρ = 1; DAR in its importance form without clip, self-normalised.")
        fracs = [c["frac"] for c in res[0]["curve"]]
        rows = []
        for i, f in enumerate(fracs):
            tv = estimate([x["curve"][i]["tv"] for x in res])
            same = max(x["same_policy"][i]["max_abs"] for x in res)
            rows.append([f, tv.text(), format_value(max(x["curve"][i]["max_abs"] for x in res)),
                         format_value(float(np.mean([x["curve"][i]["kl"] for x in res]))), same])
        rep.table(["α/(α+β)", "total variation DAR↔V-MPO", "max |Δw| (max over seeds)", "KL(w_V-MPO ‖ w_DAR) (mean)",
                   "max |Δw| at π_ref = π_t"], rows, align=["r", "l", "r", "r", "r"])
        slopes = [loglog_slope(fracs, [c["tv"] for c in x["curve"]]) for x in res]
        sl = estimate(slopes)
        same_max = max(c["max_abs"] for x in res for c in x["same_policy"])
        fig, ax = rep.new_figure()
        for x, r in zip(res, ws, strict=True):
            ax.loglog(fracs, [c["tv"] for c in x["curve"]], marker="o", alpha=0.8, label=f"seed {r['seed']}")
        xs = np.array(fracs)
        y0 = float(np.mean([x["curve"][0]["tv"] for x in res]))
        ax.loglog(xs, y0 * xs / xs[0], ls="--", color="0.5", label="slope 1")
        ax.set_xlabel("α/(α+β) (dimensionless)")
        ax.set_ylabel("total variation DAR ↔ V-MPO weights")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        rep.figure(fig, "rq4_limit.png", f"Distance between DAR's and V-MPO's (η = α+β = {t:g}) weights on the "
                   "same rollouts as α/(α+β) → 0.")
        verdicts.append(
            f"DAR's weights tend to V-MPO's at η = α+β as α/(α+β) → 0: total variation "
            f"{format_value(float(np.mean([x['curve'][0]['tv'] for x in res])))} at α/(α+β) = {fracs[0]:g} down to "
            f"{format_value(float(np.mean([x['curve'][-1]['tv'] for x in res])))} at {fracs[-1]:g}, log–log slope "
            f"{sl.text(2)} over {sl.n} seeds (first order in α/(α+β), as log w_DAR − log w_V-MPO = "
            f"(α/t)(log π_ref − log π_t) + const predicts); at π_ref = π_t they are equal for every α "
            f"(max |Δw| {format_value(same_max)}).")

    arms = _arms(p)
    tr = [r for r in records if r["config"]["part"] == "train"]
    if tr:
        rep.heading("Training: DAR at several α against V-MPO at η = α + β")
        rep.paragraph(
            f"From the SFT start model, {p['max_steps']} updates of {p['batch_size']} prompts × 8 samples each, "
            f"extra flags `{' '.join(p['train_flags'])}`; held-out greedy accuracy on {p['eval_prompts']} prompts; "
            f"KL(π_final ‖ π_ref) estimated per completion (nats) from {p['kl_prompts']} held-out prompts × 4 "
            "samples of the final policy. V-MPO: fixed η = t, ρ = 1, no advantage threshold (DAR's α → 0 limit).")
        by_arm = {}
        rows = []
        for arm in arms:
            rs = [r for r in tr if all(r["config"].get(k) == v for k, v in arm.items())]
            ok = [r for r in rs if not r["result"].get("failed")]
            by_arm[_arm_label(arm)] = ok
            if not rs:
                continue
            acc = {r["seed"]: r["result"]["final_accuracy"] for r in ok}
            gain = {r["seed"]: r["result"]["final_accuracy"] - (r["result"]["start_accuracy"] or 0.0) for r in ok}
            kl = {r["seed"]: r["result"].get("kl_ref") for r in ok}
            rows.append([_arm_label(arm), f"{len(ok)}/{len(rs)}",
                         estimate(list(acc.values())).text() if acc else "–",
                         estimate(list(gain.values())).text() if gain else "–",
                         estimate(list(kl.values())).text() if kl else "–"])
        rep.table(["arm", "runs finished", "final held-out accuracy", "accuracy gain over start",
                   "KL(π ‖ π_ref) per completion (nats)"], rows, align=["l", "l", "l", "l", "l"],
                  caption="mean [95% bootstrap interval] over seeds")
        vm = by_arm.get(_arm_label(arms[-1]), [])
        if vm:
            for arm in arms[:-1]:
                d = by_arm.get(_arm_label(arm), [])
                if not d:
                    continue
                for metric, key, hib in (("final held-out accuracy", "final_accuracy", True),
                                         ("KL to the reference (nats/completion)", "kl_ref", False)):
                    a = {r["seed"]: r["result"].get(key) for r in d}
                    b = {r["seed"]: r["result"].get(key) for r in vm}
                    if any(v is None for v in [*a.values(), *b.values()]):
                        continue
                    verdicts.append(compare(_arm_label(arm), a, _arm_label(arms[-1]), b, metric, higher_is_better=hib))
        fig, axes = rep.new_figure(ncols=2)
        labels = [lab for lab, rs in by_arm.items() if rs]
        for j, (key, ylab) in enumerate((("final_accuracy", "final held-out accuracy (fraction)"),
                                         ("kl_ref", "KL(π ‖ π_ref) (nats per completion)"))):
            ax = axes[j]
            for i, lab in enumerate(labels):
                vals = [r["result"].get(key) for r in by_arm[lab] if r["result"].get(key) is not None]
                if not vals:
                    continue
                e = estimate(vals)
                ax.errorbar([i], [e.mean], yerr=[[e.mean - e.lo], [e.hi - e.mean]], fmt="o", capsize=4)
                ax.scatter([i] * len(vals), vals, s=10, color="0.5", zorder=3)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
            ax.set_xlabel("arm")
            ax.set_ylabel(ylab)
        rep.figure(fig, "rq4_training.png", "Final held-out accuracy and KL to the reference per arm: mean with "
                   "95% bootstrap interval over seeds (grey: the seeds).")
    rep.heading("Verdict")
    rep.bullets(verdicts)
