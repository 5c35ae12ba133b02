"""`emrl control` subcommands: ``train`` and ``eval``.

::

    emrl control train --algo ppo|vmpo --env ID [--core mlp|lstm|...] --total-steps N --output-dir DIR
    emrl control eval  --run DIR [--episodes N] [--seed S] [--stochastic] [--video]

``control train`` ends with its final evaluation's return and says how it was measured
(policy, episodes, env seeds); ``control eval --run DIR`` with no other options repeats
exactly that evaluation (same policy, episodes and seeds), so the two numbers agree.
"""

from __future__ import annotations

import argparse
import json

from emrl.checkpoint import TRUST_HELP
from emrl.config import add_config_args, build_config, load_yaml
from emrl.errors import EmrlError


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from emrl.control.config import ControlConfig
    from emrl.control.train import resolve_resume_config, train

    if args.resume:
        # the saved config is the base: --config and typed options override only the
        # fields they name (never reset the others to defaults)
        overrides = load_yaml(args.config) if args.config else {}
        overrides.update({k: v for k, v in vars(args).items() if k in ControlConfig.__dataclass_fields__})
        cfg = resolve_resume_config(Path(args.output_dir), overrides)
    else:
        cfg = build_config(ControlConfig, args)
    final = train(cfg, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                  trust_checkpoint=args.trust_checkpoint)
    print(f"run directory: {args.output_dir} (emrl control eval --run {args.output_dir} repeats the "
          "final evaluation)")
    print(f"final eval return: {final['eval/return']:.2f} {final['eval/summary']}, after "
          f"{final['samples']} env steps")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from emrl.control.evaluate import evaluate
    from emrl.control.train import describe_eval, final_eval_seed, load_agent
    from emrl.rundir import RunDir
    from emrl.threads import configure_threads

    configure_threads(args.num_threads)
    agent, cfg, obs_rms = load_agent(args.run, trust_checkpoint=args.trust_checkpoint,
                                     trust_env_code=args.trust_env_code)
    # defaults: the run's own final evaluation (policy, episodes, seeds)
    episodes = args.episodes if args.episodes is not None else cfg.eval_episodes
    seed = args.seed if args.seed is not None else final_eval_seed(cfg)
    deterministic = cfg.eval_deterministic if args.stochastic is None else not args.stochastic
    video_dir = None
    if args.video:
        from pathlib import Path

        video_dir = Path(args.run) / "videos"
    res = evaluate(agent, cfg.env, episodes=episodes, seed=seed,
                   deterministic=deterministic, obs_rms=obs_rms, video_dir=video_dir)
    res["env"] = cfg.env
    res["algo"] = cfg.algo
    RunDir(args.run, resume=True).write_eval(res)
    print(f"mean return: {res['mean_return']:.2f} {describe_eval(res)}")
    if args.verbose:
        print(json.dumps(res, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this group's subcommands to ``subparsers``."""
    from emrl.control.config import ControlConfig

    p = subparsers.add_parser(
        "train", help="train a PPO or V-MPO agent on a Gymnasium environment",
        description="Train a PPO or V-MPO agent; writes config.yaml, metrics.jsonl, "
        "checkpoint-<update>/ and final/ under --output-dir.",
    )
    p.add_argument("--output-dir", required=True, metavar="DIR", help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    add_config_args(p, ControlConfig)
    p.set_defaults(func=_train)

    e = subparsers.add_parser("eval", help="evaluate a trained control agent",
                              description="Run evaluation episodes; prints 'mean return: <value>' with "
                              "the policy, episodes and env seeds it comes from, and writes DIR/eval.json. "
                              "With no options it repeats the run's final evaluation, so it prints the "
                              "number `emrl control train` ended with.")
    e.add_argument("--run", required=True, metavar="DIR", help="run directory of `emrl control train`")
    e.add_argument("--episodes", type=int, default=None,
                   help="episodes to run (default: the run's eval_episodes)")
    e.add_argument("--seed", type=int, default=None,
                   help="env seed of the first episode; episode i uses seed+i (default: the seed of the "
                        "run's final evaluation)")
    e.add_argument("--stochastic", action=argparse.BooleanOptionalAction, default=None,
                   help="sample actions (--stochastic) or take the mode (--no-stochastic) (default: as the "
                        "run's eval_deterministic, which is the mode unless changed)")
    e.add_argument("--video", action="store_true",
                   help="record the first episode to DIR/videos (needs moviepy)")
    e.add_argument("--num-threads", type=int, default=1, help="torch threads (default: 1)")
    e.add_argument("--verbose", action="store_true", help="also print every episode's return")
    e.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    e.add_argument("--trust-env-code", action="store_true",
                   help="import the module named by the run's environment id (module:EnvClass); "
                        "that runs code chosen by whoever wrote the run directory")
    e.set_defaults(func=_eval)


__all__ = ["register", "EmrlError"]
