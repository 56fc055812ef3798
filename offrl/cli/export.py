"""``offrl export``: a run's deterministic policy as one TorchScript or ONNX file plus a JSON sidecar (a thin
layer over :func:`offrl.runs.shipping.export_policy`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["register"]

EPILOG = """\
examples:
  offrl export runs/offrl__pendulum__medium-v0/cql/seed0-20260101-120000 --format onnx
  offrl export RUN_DIR --format torchscript --out policy.pt
  offrl export RUN_DIR/checkpoints/step_50000.pt --format onnx --out step50k.onnx

Loading it back:
  torch.jit.load("policy.pt")(obs)                                   (obs: float32 [B, obs_dim])
  onnxruntime.InferenceSession("policy.onnx").run(None, {"observation": obs})[0]
Continuous actions come out in the env's units (within the action bounds); discrete ones as int64 indices.
"""


def register(subparsers: Any) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export",
        help="export a run's deterministic policy as TorchScript or ONNX (+ a JSON sidecar)",
        description="Write the deterministic policy of a run (checkpoints/latest.pt, or the checkpoint given) "
        "as one file mapping an observation batch to actions, and <file>.json beside it: spaces, dataset "
        "digest, checkpoint, config, score, and the exported file's check against the PyTorch policy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run directory (uses checkpoints/latest.pt) or a checkpoint")
    p.add_argument("--format", required=True, metavar="torchscript|onnx",
                   help="torchscript (torch.jit.load) or onnx (onnxruntime; pip install 'offrl[export]')")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="file to write (default RUN_DIR/export/policy.pt or .onnx); the sidecar is FILE.json")
    p.add_argument("--json", action="store_true", help="print the sidecar as JSON instead of text")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from offrl.runs.shipping import export_policy

    meta = export_policy(args.target, args.format, args.out)
    if args.json:
        print(json.dumps(meta, indent=2, default=str))
        return 0
    print(f"exported {meta['run']['algo']} policy (step {meta['run']['step']}, {meta['dataset']['id']}) as "
          f"{args.format}: {meta['path']}")
    print(f"input observation {meta['input']['shape']} float32 -> action {meta['output']['shape']} "
          f"{meta['output']['dtype']} ({meta['output']['meaning']})")
    print(f"checked on {meta['check']['observations']} observations: max |exported - pytorch| = "
          f"{meta['check']['max_abs_diff_vs_pytorch_policy']:.2g}; sidecar {meta['sidecar']}")
    return 0
