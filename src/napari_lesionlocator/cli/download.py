"""``lesionlocator download-weights``: fetch, verify and unpack the LesionLocator checkpoint."""

from __future__ import annotations

import argparse
import sys

from .common import EXIT_OK, add_command

__all__ = ["add_parser", "run"]


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``download-weights`` on the ``lesionlocator`` subparsers (called by :func:`.build_parser`)."""
    from ..io.download import DEFAULT_URL

    p = add_command(
        sub, "download-weights",
        help="download and unpack the LesionLocator checkpoint (Zenodo 15174217)",
        description="Download the LesionLocator checkpoint archive (resumes an interrupted download), verify its "
                    "checksum, unpack it safely and print the checkpoint folder.",
    )
    p.add_argument("--url", default=DEFAULT_URL, help=f"archive URL, zip or tar (default: {DEFAULT_URL})")
    p.add_argument("--dest", default=None, metavar="DIR",
                   help="folder to unpack into (default: the per-user data folder of napari-lesionlocator)")
    p.add_argument("--sha256", default=None, metavar="HEX", help="expected SHA-256 of the archive")
    p.add_argument("--md5", default=None, metavar="HEX",
                   help="expected MD5 of the archive (default URL: read from Zenodo's API when no checksum is given)")
    p.add_argument("--zenodo-api", default=None, metavar="URL", dest="zenodo_api",
                   help="Zenodo records API URL to read the MD5 from")
    p.add_argument("--keep-archive", action="store_true", dest="keep_archive",
                   help="keep the downloaded archive after unpacking")
    p.add_argument("--overwrite", action="store_true", help="download and unpack again over an installed checkpoint")
    p.add_argument("--set-default", action="store_true", dest="set_default",
                   help="store the checkpoint in the user config so that the lesionlocator engine becomes the default")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", help="network timeout in seconds (default: 60)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io.atomic import require_output_folder
    from ..io.download import download_weights

    if args.dest:
        require_output_folder(args.dest, what="--dest folder")  # exit 2 before any download

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    def warn(msg: str) -> None:  # shown even with --quiet
        print(msg, file=sys.stderr, flush=True)

    root = download_weights(args.url, args.dest, sha256=args.sha256, md5=args.md5, api_url=args.zenodo_api,
                            overwrite=args.overwrite, keep_archive=args.keep_archive, progress=not args.quiet,
                            timeout=args.timeout, log=log, warn=warn)
    if args.set_default:
        from ..engines.lesionlocator.config import set_configured_checkpoint

        cfg = set_configured_checkpoint(root)
        log(f"Stored as the default checkpoint in {cfg}")
    print(root)
    log("Use it with:\n"
        f"  lesionlocator segment -i IMAGE -p PROMPTS.json -t point -o OUT -m {root}\n"
        f"or set it once: export LESIONLOCATOR_CHECKPOINT={root}  (or: download-weights --set-default)")
    return EXIT_OK
