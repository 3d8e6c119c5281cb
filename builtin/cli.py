"""``adasde train-builtin``: train the embedded Fashion-MNIST U-Net, the FD-FMNIST classifier, or its statistics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``train-builtin`` sub-command."""
    p = subparsers.add_parser(
        "train-builtin",
        help="train the embedded Fashion-MNIST model (U-Net), its classifier or the reference statistics",
        description="Train the embedded Fashion-MNIST diffusion U-Net with the EDM recipe (deterministic given "
        "--seed and the step count), or the FD-FMNIST classifier (--model classifier), the noise-conditional "
        "classifier of classifier guidance (--model noisy-classifier, --steps default 2400), or recompute the "
        "reference statistics (--model stats).  Needs the Fashion-MNIST files "
        "(apt-get install dataset-fashion-mnist, or ADASDE_FMNIST_DIR).",
    )
    p.add_argument("--model", choices=("unet", "classifier", "noisy-classifier", "stats", "export"), default="unet",
                   help="what to train; 'export' writes the EMA weights of --checkpoint to --out")
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this invocation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=None, help="batch size (unet 128, classifier 128)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--flip", action="store_true", help="random horizontal flips (unet)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast (unet)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="output weights file (stats: output folder); required unless "
                   "--overwrite-shipped")
    p.add_argument("--overwrite-shipped", action="store_true",
                   help="allow writing the package's own builtin/weights/... or builtin/stats/ (the shipped files)")
    p.add_argument("--checkpoint", default=None, help="resumable checkpoint path (unet)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0)
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--preview", default=None, help="PNG grid of Heun-18 samples written at each checkpoint (unet)")
    p.add_argument("--arch", default=None, help='JSON U-Net config overrides, e.g. \'{"channels": [32, 64, 128]}\'')
    p.add_argument("--epochs", type=float, default=None, help="classifier epochs (default 4)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _target(args: argparse.Namespace, shipped: Path, what: str) -> Path:
    """The output path, validated before any work: never one of the package's shipped files unless
    ``--overwrite-shipped`` was given (FD-FMNIST statistics and coefficient files depend on them)."""
    from ..errors import UsageError
    from ..fileio import check_writable

    out = Path(args.out) if args.out else shipped
    if out.resolve() == shipped.resolve() and not args.overwrite_shipped:
        raise UsageError(f"train-builtin would overwrite the shipped {what} {shipped}; pass --out PATH for a new file, "
                         f"or --overwrite-shipped to replace the package's own")
    if what == "statistics folder":
        if out.exists() and not out.is_dir():
            raise UsageError(f"train-builtin --model stats: --out {out} must be a folder")
        for name in ("fmnist_train.npz", "fmnist_test.npz"):
            check_writable(out / name, "--out")
        return out
    return check_writable(out, "--out")


def _run(args: argparse.Namespace) -> int:
    from . import classifier as clf
    from . import train as tr

    if args.model == "unet":
        if args.steps is None and args.minutes is None:
            raise SystemExit("train-builtin: give --steps N and/or --minutes M")
        out = _target(args, tr.DEFAULT_WEIGHTS, "U-Net weights")
        cfg = tr.TrainConfig(
            seed=args.seed, steps=args.steps, minutes=args.minutes, flip=args.flip, bf16=not args.no_bf16,
            threads=args.threads, checkpoint=args.checkpoint, checkpoint_minutes=args.checkpoint_minutes,
            resume=args.resume, out=str(out), preview=args.preview,
            arch=json.loads(args.arch) if args.arch else {}, progress=not args.no_progress,
        )
        if args.batch:
            cfg.batch = args.batch
        if args.lr:
            cfg.lr = args.lr
        _, summary = tr.train(cfg)
        print(json.dumps({k: summary[k] for k in ("steps", "kimg", "train_seconds", "final_loss_avg100")}))
        print(f"wrote {cfg.out}")
        return 0
    if args.model == "export":
        out = _target(args, tr.DEFAULT_WEIGHTS, "U-Net weights")
        if not args.checkpoint:
            raise SystemExit("train-builtin --model export needs --checkpoint PATH")
        summary = tr.export_checkpoint(args.checkpoint, out)
        print(json.dumps({k: summary[k] for k in ("steps", "kimg", "train_seconds", "final_loss_avg100")}))
        print(f"wrote {out}")
        return 0
    if args.model == "classifier":
        out = _target(args, clf.DEFAULT_CLASSIFIER, "FD-FMNIST classifier")
        summary = clf.train_classifier(out=out, seed=args.seed, epochs=args.epochs or 4.0, batch=args.batch or 128,
                                       lr=args.lr or 2e-3, threads=args.threads, progress=not args.no_progress)
        print(json.dumps(summary))
        print(f"wrote {out}")
        return 0
    if args.model == "noisy-classifier":
        from .noisy_classifier import NOISY_CLASSIFIER, train_noisy_classifier

        out = _target(args, Path(NOISY_CLASSIFIER), "noise-conditional classifier")
        summary = train_noisy_classifier(out=str(out), seed=args.seed, steps=args.steps or 2400,
                                         batch=args.batch or 128, lr=args.lr or 2e-3, threads=args.threads,
                                         progress=not args.no_progress)
        print(json.dumps(summary))
        print(f"wrote {out}")
        return 0
    out = _target(args, clf.STATS_DIR, "statistics folder")
    for path in clf.write_reference_stats(out_dir=out, progress=not args.no_progress):
        print(f"wrote {path}")
    return 0
