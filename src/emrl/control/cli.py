"""`emrl control` subcommands: ``train`` and ``eval``.

::

    emrl control train --algo ppo|vmpo --env ID [--core mlp|lstm|...] --total-steps N --output-dir DIR
    emrl control eval  --run DIR [--episodes N] [--video]
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
    print(f"final eval return: {final['eval/return']:.2f} after {final['samples']} env steps")
    print(f"run directory: {args.output_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from emrl.control.evaluate import evaluate
    from emrl.control.train import load_agent
    from emrl.rundir import RunDir
    from emrl.threads import configure_threads

    configure_threads(args.num_threads)
    agent, cfg, obs_rms = load_agent(args.run, trust_checkpoint=args.trust_checkpoint,
                                     trust_env_code=args.trust_env_code)
    video_dir = None
    if args.video:
        from pathlib import Path

        video_dir = Path(args.run) / "videos"
    res = evaluate(agent, cfg.env, episodes=args.episodes, seed=args.seed,
                   deterministic=not args.stochastic, obs_rms=obs_rms, video_dir=video_dir)
    res["env"] = cfg.env
    res["algo"] = cfg.algo
    RunDir(args.run, resume=True).write_eval(res)
    print(f"mean return: {res['mean_return']:.2f}")
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
    p.add_argument("--output-dir", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --output-dir")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    add_config_args(p, ControlConfig)
    p.set_defaults(func=_train)

    e = subparsers.add_parser("eval", help="evaluate a trained control agent",
                              description="Run evaluation episodes; prints 'mean return: <value>' "
                              "and writes DIR/eval.json.")
    e.add_argument("--run", required=True, help="run directory of `emrl control train`")
    e.add_argument("--episodes", type=int, default=10, help="episodes to run (default: 10)")
    e.add_argument("--seed", type=int, default=12345, help="seed of the first episode")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of the mode")
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
