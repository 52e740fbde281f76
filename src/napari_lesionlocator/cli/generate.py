"""``lesionlocator generate-checkpoint``: a checkpoint with seeded random weights in the official layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import InputImageError, OutputExistsError
from .common import EXIT_OK, add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``generate-checkpoint`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    p = add_command(
        sub, "generate-checkpoint",
        help="write a checkpoint with random weights in the official layout (tests, benchmarks)",
        description="Write OUT/LesionLocatorCheckpoint with seeded random weights (needs torch). Not a model: "
                    "its masks are meaningless; it exercises loading and speed.",
    )
    p.add_argument("out", metavar="OUT", help="parent folder of the LesionLocatorCheckpoint folder to create")
    p.add_argument("--plans", default=None, help="plans.json to start from (default: the reference ResEnc-L plans)")
    p.add_argument("--tiny", action="store_true",
                   help="a tiny network and patch (fast on CPU) instead of the real size")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: 0)")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=[0], metavar="FOLD",
                   help="folds to write (default: 0)")
    p.add_argument("--parts", nargs="+", choices=["bbox", "point", "track"], default=["bbox", "point", "track"],
                   help="which models to write (default: all three; track builds the 70 M-parameter uniGradICON)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing LesionLocatorCheckpoint folder")
    return p


def run(args: argparse.Namespace) -> int:
    try:
        from ..engines.lesionlocator.generate import generate_checkpoint
    except ImportError as exc:
        from ..core.errors import EngineError

        raise EngineError(f"generate-checkpoint needs torch and nnunetv2 ({exc}); install "
                          "'napari-lesionlocator[lesionlocator]'") from None
    target = Path(args.out) / "LesionLocatorCheckpoint"
    if args.plans and not Path(args.plans).is_file():
        raise InputImageError(f"plans file not found: {args.plans}")
    if target.exists():
        if not args.overwrite:
            raise OutputExistsError(f"{target} already exists; refusing to overwrite it (use --overwrite)")
        import shutil

        shutil.rmtree(target)
    root = generate_checkpoint(args.out, plans_path=args.plans, tiny=args.tiny, seed=args.seed, folds=args.folds,
                               parts=args.parts)
    print(root)
    return EXIT_OK
