"""``adasde fid ref | calc | sample`` (EDM ``fid.py`` style; docs/ALGORITHMS.md section 6).

    adasde fid ref    --data DIR|ZIP|NPZ|builtin:fmnist-train --dest stats.npz [--net inception|fmnist]
    adasde fid calc   --images DIR|ZIP --ref stats.npz|DIR [--kid-pr]
    adasde fid sample --model SPEC --sampler NAME [--coeffs FILE] [--nfe K | --steps N] --seeds 0-49999
                      --ref stats.npz [--batch B] [--out-images DIR] [--resume STATE] [--json OUT]

Multi-process: ``torchrun --nproc_per_node=G -m adasde fid sample ...`` (each rank a seed shard; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# reference.LAYOUTS, spelled out so that building the parser imports no numpy/torch (tests check they agree)
LAYOUTS = ("edm", "pytorch-fid", "torch-fidelity")


class _DeprecatedQuiet(argparse.Action):
    """``--quiet``: the old spelling of ``--no-progress`` (hidden); says so on stderr."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"adasde: {option_string} is deprecated, use --no-progress", file=sys.stderr)
        namespace.no_progress = True


def common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=int, default=64, help="images per batch and rank (default 64)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--inception-weights", default=None, metavar="FILE",
                   help="Inception-v3 weights file (else $ADASDE_INCEPTION_WEIGHTS or the torch hub cache)")
    p.add_argument("--allow-download", action="store_true",
                   help="download the Inception weights into the torch hub cache if missing (off by default)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="corrupt or non-image files: stop with an error (default) or skip them with a warning")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", nargs=0, action=_DeprecatedQuiet, help=argparse.SUPPRESS)


def emit(result: dict[str, Any], out: str | None) -> None:
    from ..runtime import rank_world
    from .pipeline import write_json

    if rank_world()[0] != 0:
        return
    if out:
        write_json(out, result)
    print(json.dumps(result, indent=2, default=str))
    print(f"{result['metric']}: {result['value']:.4f} over {result['num_images']} images", file=sys.stderr)


def _ref(a: argparse.Namespace) -> int:
    from ..runtime import init_distributed
    from .pipeline import compute_reference

    init_distributed()
    ref = compute_reference(a.data, a.dest, net=a.net, layout=a.layout, batch=a.batch, device=a.device,
                            weights=a.inception_weights, allow_download=a.allow_download, on_error=a.on_error,
                            max_images=a.max_images, progress=not a.no_progress)
    print(f"wrote {a.dest}: {ref.meta.get('feature_net')} statistics of {ref.n} images", file=sys.stderr)
    return 0


def _calc(a: argparse.Namespace) -> int:
    from ..runtime import init_distributed
    from .pipeline import score_images

    init_distributed()
    res = score_images(a.images, a.ref, net=a.net, batch=a.batch, device=a.device, weights=a.inception_weights,
                       allow_download=a.allow_download, on_error=a.on_error, kid_pr=a.kid_pr,
                       max_images=a.max_images, progress=not a.no_progress)
    emit(res, a.json)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add ``fid`` with its sub-commands ``ref`` and ``calc``; returns the ``fid`` sub-command table, to which
    ``generate.cli`` adds ``fid sample``."""
    parser = subparsers.add_parser("fid", help="FID / FD-FMNIST: reference statistics, scoring, generate-and-score",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="fid_command", metavar="{ref,calc,sample}")

    p = sub.add_parser("ref", help="feature statistics of a dataset -> .npz (EDM / pytorch-fid compatible)")
    p.add_argument("--data", required=True,
                   help="image folder, zip, .npz of uint8 images, builtin:fmnist-train|test or a stats .npz")
    p.add_argument("--dest", required=True, help="output statistics .npz")
    p.add_argument("--net", default="inception", help="feature network: inception (FID) or fmnist (FD-FMNIST)")
    p.add_argument("--layout", choices=LAYOUTS, default="edm", help="file layout (default edm: np.savez float64)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images (sorted order)")
    common_arguments(p)
    p.set_defaults(func=_ref)

    p = sub.add_parser("calc", help="score an image folder/zip against reference statistics")
    p.add_argument("--images", required=True, help="generated images: folder or zip of PNG/JPG")
    p.add_argument("--ref", required=True, help="reference statistics .npz (or an image folder/zip)")
    p.add_argument("--net", default=None, help="feature network (default: the one recorded in --ref)")
    p.add_argument("--kid-pr", action="store_true",
                   help="also KID and precision/recall (needs --ref to be images; keeps up to 10k features)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images (sorted order)")
    common_arguments(p)
    p.set_defaults(func=_calc)

    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return sub
