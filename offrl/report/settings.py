"""What a run report states about how the run was made: the hyperparameters that differ from offrl's
defaults (the schema's, before any bundled per-dataset config or flag) and the evaluation protocol."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from offrl.config import ALGO_SECTION, METADATA_KEYS, schema_for, structured_config
from offrl.report.runs import RunRecord, flatten

__all__ = ["changed_settings", "eval_protocol"]

# Recorded, not chosen: never listed as a changed hyperparameter.
_SKIP = (*METADATA_KEYS, "dataset", "seed", "device", "progress_bar", "cache_dir")


def _default_flat(algo: str) -> dict[str, Any]:
    node = structured_config(schema_for(algo))
    return flatten(OmegaConf.to_container(node, resolve=False, throw_on_missing=False))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def changed_settings(run: RunRecord) -> list[tuple[str, Any, Any]]:
    """``(key, value, default)`` for every config key of the run whose value is not offrl's default;
    sections of algorithms the run does not use are left out."""
    algo = run.algo if run.algo in ALGO_SECTION else "cql"
    defaults = _default_flat(algo)
    inactive = tuple(s for a, s in ALGO_SECTION.items() if a != algo)
    out = []
    for key, value in sorted(run.flat_config.items()):
        top = key.split(".", 1)[0]
        if top in _SKIP or top in inactive or key == "algo":
            continue
        default = defaults.get(key, "(not an option of this offrl)")
        if not _same(value, default):
            out.append((key, value, default))
    return out


def eval_protocol(run: RunRecord) -> str:
    """One sentence: when, how many episodes, which seeds, which env and references."""
    ev = run.config.get("eval") if isinstance(run.config.get("eval"), dict) else {}
    interval, episodes = ev.get("interval"), ev.get("episodes")
    if interval is None or episodes is None:
        return "Not recorded: config.yaml has no eval section (a run written by another tool or an older offrl)."
    if interval == 0:
        return "No evaluation (eval.interval 0)."
    final = ev.get("final_episodes")
    ds = run.config.get("dataset") if isinstance(run.config.get("dataset"), dict) else {}
    env = ds.get("env_id") or "the dataset's own env"
    ref = run.ref()
    refs = (f"references {ref['min']:g}..{ref['max']:g} from {ref.get('source') or 'unknown'}"
            if ref.get("min") is not None and ref.get("max") is not None else "no reference scores (raw returns)")
    final_text = f"; the last evaluation {max(final, episodes or 0)} episodes" if final else ""
    return (f"Every {interval} gradient steps and after the last one, {episodes} episodes of the deterministic "
            f"policy{final_text}; episode i reset with seed {ev.get('seed', 0)} + i (the same start states at "
            f"every evaluation and for every training seed), each run to its own end; in {env}; {refs}. "
            f"TD error on {ev.get('heldout_fraction', 0.05):g} of the dataset's episodes held out of training.")
