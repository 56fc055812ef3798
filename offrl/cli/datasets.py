"""`offrl datasets {info,list,convert,make,export-actor}`: inspect, list, convert and regenerate datasets,
and export a trained actor as a behaviour checkpoint."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["register"]


def _add_load_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="HDF5 file, Minari dataset folder, bundled id or Minari id")
    p.add_argument(
        "--cache-dir", help="where converted datasets are cached (default: $OFFRL_CACHE or ~/.cache/offrl)"
    )
    p.add_argument(
        "--allow-nan", action="store_true", help="accept NaN/inf values in the data (an error by default)"
    )
    p.add_argument(
        "--gamma", type=float, default=0.99, help="discount of the stored Monte-Carlo returns (default 0.99)"
    )
    p.add_argument("--chunk-size", type=int, default=None, help="rows per conversion chunk (bounds memory)")


def register(subparsers: Any) -> None:
    """Add the ``datasets`` command and its subcommands."""
    parser = subparsers.add_parser("datasets", help="inspect, list, convert and regenerate datasets")
    sub = parser.add_subparsers(dest="datasets_command", metavar="SUBCOMMAND")
    sub.required = True

    info = sub.add_parser("info", help="shapes, spaces, episode statistics, references and health warnings")
    _add_load_options(info)
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument("--env", help="evaluation env id (overrides the dataset's)")
    info.add_argument(
        "--ref-min-score", type=float, help="reference minimum score (overrides metadata and tables)"
    )
    info.add_argument(
        "--ref-max-score", type=float, help="reference maximum score (overrides metadata and tables)"
    )
    info.set_defaults(func=_info)

    lst = sub.add_parser("list", help="bundled, local Minari and cached datasets")
    lst.add_argument("--cache-dir", help="cache to list (default: $OFFRL_CACHE or ~/.cache/offrl)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_list)

    conv = sub.add_parser("convert", help="convert a dataset into the cache (memmapped TED layout)")
    _add_load_options(conv)
    conv.set_defaults(func=_convert)

    make = sub.add_parser(
        "make",
        help="regenerate a bundled dataset from its recipe, or make one from a run (--from-run) or a "
        "checkpoint's policy (--policy)",
    )
    make.add_argument("name", nargs="?", help="recipe name, e.g. offrl/pendulum/medium-v0 or pendulum/medium")
    make.add_argument("--root", help="write under this folder (default: the bundled datasets folder for "
                      "bundled recipes, $MINARI_DATASETS_PATH for on-demand recipes, --from-run and --policy)")
    make.add_argument("--from-run", metavar="RUN_DIR",
                      help="write the online replay buffer of this run's latest checkpoint ('replay' flavour)")
    make.add_argument("--policy", metavar="CHECKPOINT",
                      help="roll out this run's (or checkpoint's) policy ('medium'/'expert' flavours)")
    make.add_argument("--env", metavar="ID", help="env to roll out in / record (default: the run's)")
    make.add_argument("--episodes", type=int, metavar="K", help="with --policy: episodes to record")
    make.add_argument("--noise", type=float, default=0.0, metavar="E",
                      help="with --policy: Gaussian noise std as a fraction of the half action range "
                      "(continuous) or epsilon (discrete); default 0")
    make.add_argument("--seed", type=int, default=0, help="with --policy: episode i resets with seed + i")
    make.add_argument("--transitions", type=int, metavar="N",
                      help="with an on-demand recipe NAME: whole episodes until at least N transitions instead of "
                      "the recipe's size (a quick, smaller version under the same id; a later make without it "
                      "regenerates the full one)")
    make.add_argument("--dataset-id", metavar="ID",
                      help="id of the new dataset, e.g. offrl-runs/pendulum/replay-v0 (default from the run name)")
    make.add_argument("--ref-min-score", type=float, help="reference minimum score (default: the run's dataset)")
    make.add_argument("--ref-max-score", type=float, help="reference maximum score (default: the run's dataset)")
    make.set_defaults(func=_make)

    export = sub.add_parser(
        "export-actor",
        help="write the actor of a CQL/SAC run's checkpoint as a small actor-only behaviour checkpoint (.npz + "
        ".json metadata with its measured return), the format of datasets/behaviour/ and --policy",
    )
    export.add_argument("checkpoint", metavar="CHECKPOINT", help="a run folder or one of its checkpoints/*.pt")
    export.add_argument("out", metavar="OUT.npz", help="actor file to write (its metadata goes to OUT.json)")
    export.add_argument("--env", required=True, metavar="ID", help="env the actor acts in (e.g. Hopper-v5)")
    export.add_argument("--episodes", type=int, default=20, metavar="K",
                        help="deterministic episodes measuring its return (default 20)")
    export.add_argument("--d4rl-reference", metavar="TASK",
                        help="D4RL task whose reference scores normalize the return (e.g. hopper)")
    export.set_defaults(func=_export_actor)


def _load(args: argparse.Namespace, **extra: Any) -> Any:
    from offrl.data.dataset import load_dataset

    return load_dataset(
        args.source,
        cache_dir=args.cache_dir,
        allow_nan=args.allow_nan,
        chunk_size=args.chunk_size,
        gamma=args.gamma,
        **extra,
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return "-" if value is None else str(value)


def _info(args: argparse.Namespace) -> int:
    from offrl.algos.cql import NARROW_BC_WEIGHT
    from offrl.config.ranges import check_ref_scores
    from offrl.data.coverage import action_coverage
    from offrl.data.scaling import observation_spread

    check_ref_scores(args.ref_min_score, args.ref_max_score, "--ref-min-score", "--ref-max-score")
    ds = _load(args, env=args.env, ref_min_score=args.ref_min_score, ref_max_score=args.ref_max_score)
    payload = ds.info.to_dict()
    coverage = action_coverage(ds)
    if coverage is not None:
        payload["action_spread"] = coverage.action_spread
        if coverage.narrow:
            payload["warnings"] = [*payload["warnings"], (
                f"{coverage.describe()}. Offline RL can only trust actions the data took: offrl's CQL holds its "
                f"actor on them (cql.actor_bc_weight={NARROW_BC_WEIGHT:g}, chosen automatically; "
                "--set cql.actor_bc_weight=0 turns it off)")]
    spread = None if payload.get("multiagent") else observation_spread(ds)
    if spread is not None:
        payload["observation_std"] = {"min": spread.std_min, "max": spread.std_max, "constant": spread.constant}
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
        return 0
    rows = [
        ("name", payload["name"]),
        ("format", payload["format"]),
        ("source", payload["source"]),
        ("transitions", payload["transitions"]),
        ("episodes", payload["episodes"]),
        ("terminated / truncated", f"{payload['terminated']} / {payload['truncated']}"),
        ("rows dropped (by rules)", payload["dropped_rows"]),
        ("observation", f"{_fmt(payload['observation_shape'])} {_fmt(payload['observation_dtype'])}"),
        ("action space", _fmt(payload["action_space"])),
        ("episode length", _fmt(payload["episode_length"])),
        ("episode return", _fmt(payload["episode_return"])),
        ("reward", _fmt(payload["reward"])),
        ("env", f"{_fmt(payload['env_id'])} ({_fmt(payload['env_source'])})"),
        ("max episode steps", _fmt(payload["max_episode_steps"])),
        (
            "reference scores",
            f"min={_fmt(payload['ref_min_score'])} max={_fmt(payload['ref_max_score'])} "
            f"(source: {_fmt(payload['ref_source'])})",
        ),
        ("gamma (mc_return)", _fmt(payload["gamma"])),
        ("digest", payload["digest"][:16]),
        ("cache", payload["cache"]),
    ]
    ma = payload.get("multiagent")
    if ma:  # docs/multiagent.md: the agent axis, per-agent spaces, team and per-agent returns
        at = next(i for i, (k, _) in enumerate(rows) if k == "observation")
        rows[at:at + 2] = [
            ("agents", f"{ma['n_agents']} ({ma['reward']} rewards)"),
            ("per-agent observation", f"{_fmt(ma['observation_shape'][1:])} {_fmt(payload['observation_dtype'])}"),
            ("per-agent actions", f"discrete, n={ma['n_actions']}"
             + (" (with action masks)" if ma.get("action_masks") else "")),
            ("global state", f"[{ma['state_dim']}]" if ma.get("state_dim") else "none (QMIX mixes with the observations)"),
        ]
        at = next(i for i, (k, _) in enumerate(rows) if k == "episode return")
        rows[at] = ("team return", _fmt(payload["episode_return"]))
        rows.insert(at + 1, ("agent return mean", _fmt(ma["agent_return_mean"])))
    if coverage is not None:
        rows.append(("action coverage", coverage.describe()))
    if spread is not None:  # raw by default, as in d3rlpy; <algo>.observation_scaler=standard scales them
        rows.append(("observation scale", spread.describe()))
    if payload.get("env_note"):
        rows.append(("env note", payload["env_note"]))
    if payload.get("ref_hint"):
        rows.append(("references known", payload["ref_hint"]))
    if payload.get("episode_return_distribution"):
        rows.append(("return distribution", _fmt(payload["episode_return_distribution"])))
    if payload.get("normalized_score"):
        rows.append(("normalized score", _fmt(payload["normalized_score"])))
    for rule, applied in (payload.get("row_rules") or {}).items():
        rows.append(("row rule", f"{rule}: {applied['rows']} rows: {applied['rule']}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    warnings = payload["warnings"]
    print(f"{'warnings':<{width}}  {'none' if not warnings else len(warnings)}")
    for w in warnings:
        print(f"  - {w}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from offrl.data.catalog import bundled_root, list_bundled
    from offrl.data.convert import cache_root
    from offrl.data.dataset import cached_entries
    from offrl.data.minari import list_local_minari, minari_root
    from offrl.datagen.marl import marl_status
    from offrl.datagen.on_demand import on_demand_status

    listing = {
        "bundled": {"root": str(bundled_root()), "datasets": list_bundled()},
        "on_demand": {"root": str(minari_root()), "datasets": on_demand_status() + marl_status()},
        "minari": {"root": str(minari_root()), "datasets": list_local_minari()},
        "cached": {"root": str(cache_root(args.cache_dir)), "datasets": cached_entries(args.cache_dir)},
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for title, key in (("bundled datasets", "bundled"), ("local Minari datasets", "minari")):
        section = listing[key]
        print(f"{title} ({section['root']}):")
        for name in section["datasets"]:
            print(f"  {name}")
        if not section["datasets"]:
            print("  (none)")
        if key == "bundled":
            on_demand = listing["on_demand"]
            print(f"on-demand recipes (offrl datasets make NAME; written under {on_demand['root']}):")
            widths = [max((len(e[k]) for e in on_demand["datasets"]), default=0) for k in ("name", "env_id", "policy")]
            for e in on_demand["datasets"]:
                print(f"  {e['name']:<{widths[0]}}  {e['env_id']:<{widths[1]}}  {e['policy']:<{widths[2]}}  "
                      f"{e['size']}  [{e['status']}]")
            if not on_demand["datasets"]:
                print("  (none)")
    cached = listing["cached"]
    print(f"cached conversions ({cached['root']}):")
    for entry in cached["datasets"]:
        print(
            f"  {entry['name']}  {entry['format']}  {entry['transitions']} transitions  gamma={entry['gamma']}  <- {entry['source']}"
        )
    if not cached["datasets"]:
        print("  (none)")
    return 0


def _convert(args: argparse.Namespace) -> int:
    ds = _load(args)
    print(f"{ds.name}: {ds.info.transitions} transitions, {ds.info.episodes} episodes -> {ds.cache_path}")
    for w in ds.info.warnings:
        print(f"  warning: {w}")
    return 0


def _make(args: argparse.Namespace) -> int:
    from offrl.errors import UserError

    chosen = [flag for flag, value in (("NAME", args.name), ("--from-run", args.from_run), ("--policy", args.policy))
              if value is not None]
    if len(chosen) != 1:
        raise UserError("offrl datasets make: give exactly one of NAME (a recipe), --from-run RUN_DIR or "
                        f"--policy CHECKPOINT (got {', '.join(chosen) or 'none'})")
    if args.transitions is not None and args.name is None:
        raise UserError("--transitions: only with a recipe NAME (use --episodes with --policy)")
    if args.transitions is not None:
        from offrl.datagen.recipes import is_on_demand

        if not is_on_demand(args.name):
            raise UserError(f"--transitions: {args.name} is not an on-demand MuJoCo recipe (offrl datasets list "
                            "names them); bundled and multi-agent recipes are made at their recipe's size: drop it")
    refs = {"ref_min": args.ref_min_score, "ref_max": args.ref_max_score}
    from offrl.config.ranges import check_ref_scores

    check_ref_scores(args.ref_min_score, args.ref_max_score, "--ref-min-score", "--ref-max-score")
    if args.from_run is not None:
        from offrl.datagen.from_run import dataset_from_run

        path = dataset_from_run(args.from_run, name=args.dataset_id, root=args.root, env_id=args.env, **refs)
    elif args.policy is not None:
        if args.episodes is None:
            raise UserError("--policy: give --episodes K (how many episodes to record)")
        if args.policy.endswith(".npz"):  # an actor-only checkpoint: no torch needed
            from offrl.datagen.export import dataset_from_actor as dataset_from_policy
        else:
            from offrl.datagen.from_run import dataset_from_policy
        path = dataset_from_policy(args.policy, episodes=args.episodes, env_id=args.env, noise=args.noise,
                                   seed=args.seed, name=args.dataset_id, root=args.root, **refs)
    elif args.transitions is not None:
        from offrl.datagen.on_demand import make_on_demand

        path = make_on_demand(args.name, args.root, transitions=args.transitions)
    else:
        from offrl.datagen.bundled import make_bundled

        path = make_bundled(args.name, args.root)
    print(path)
    return 0


def _export_actor(args: argparse.Namespace) -> int:
    from offrl.datagen.export import export_actor
    from offrl.errors import UserError

    if args.episodes <= 0:
        raise UserError(f"--episodes: must be a positive integer, got {args.episodes}")
    meta = export_actor(args.checkpoint, args.out, env_id=args.env, episodes=args.episodes,
                        d4rl_reference=args.d4rl_reference)
    ret = meta["measured_return"]
    norm = f", D4RL-normalized {ret['d4rl_normalized']:.1f}" if "d4rl_normalized" in ret else ""
    print(f"{args.out}: {meta['algo']} actor after {meta['training_steps']} steps; return {ret['mean']:.1f} "
          f"+- {ret['std']:.1f} over {ret['episodes']} episodes{norm}")
    return 0
