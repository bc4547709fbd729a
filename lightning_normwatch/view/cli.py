"""The ``normwatch`` command (also ``python -m lightning_normwatch``).

``normwatch report LOGDIR`` prints, for every run under ``LOGDIR``, each watched tensor's latest
figures and the run's alerts, read from the TensorBoard event files. Exit status: 0 when no alert
of severity ``--fail-on`` (default ``error``) or worse was raised, 1 when one was (for CI), 2 for
a usage error or a directory without NormWatch data.

Example:
    >>> import tempfile
    >>> main(["report", tempfile.mkdtemp()])
    2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from .. import __version__
from .report import (
    TABLE_FIGURES,
    NoNormWatchData,
    exit_code,
    exit_reason,
    format_reports,
    load_reports,
    reports_json,
)

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``normwatch``."""
    parser = argparse.ArgumentParser(
        prog="normwatch",
        description="Inspect what the NormWatch callback logged to TensorBoard.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    report = sub.add_parser(
        "report",
        help="latest figures per watched tensor and the alerts of every run under LOGDIR",
        description=(
            "Read the TensorBoard event files under LOGDIR (with TensorBoard's reader) and print, per run, "
            "a table of each watched tensor's layer type and latest figures (columns: "
            f"{', '.join(TABLE_FIGURES)}; --json has every logged figure), then the warnings and errors "
            "with their messages. Exit status: 0 healthy, 1 if an alert of severity --fail-on or worse was "
            "raised, 2 if LOGDIR holds no NormWatch data."
        ),
    )
    report.add_argument("logdir", metavar="LOGDIR", help="a TensorBoardLogger save_dir or log_dir")
    report.add_argument("--json", action="store_true", help="print one JSON document (every figure and alert)")
    report.add_argument(
        "--all-alerts",
        action="store_true",
        help="list every alert: each follower under its root with its message, and info alerts (by default "
        "followers are folded under their root and info alerts only counted)",
    )
    report.add_argument(
        "--fail-on",
        choices=("error", "warning", "info", "never"),
        default="error",
        help="exit with status 1 when an alert of this severity or worse was raised (default: error)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``normwatch``; returns the exit status.

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    args = build_parser().parse_args(argv)
    if args.command == "report":
        try:
            reports = load_reports(args.logdir)
        except NoNormWatchData as exc:
            print(f"normwatch report: error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            text = json.dumps(reports_json(reports, args.logdir, args.fail_on), indent=2, allow_nan=False)
        else:
            text = format_reports(reports, all_alerts=args.all_alerts)
        reason = exit_reason(reports, args.fail_on)
        try:
            print(text, flush=True)
            if reason is not None:  # after a JSON document, on stderr so that stdout stays valid JSON
                print(reason, file=sys.stderr if args.json else sys.stdout, flush=True)
        except BrokenPipeError:  # e.g. `normwatch report logs | head`: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_code(reports, args.fail_on)
    return 2  # pragma: no cover - argparse requires a command
