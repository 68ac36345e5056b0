"""`chord data prep-openr1 | prep-toolace IN... OUT [options]`: the paper's datasets as this
project's JSONL files (the recipes and their options: data/prep_openr1.py, data/prep_toolace.py)."""

from __future__ import annotations

import argparse


def prep(args: argparse.Namespace) -> int:
    if args.action == "prep-openr1":
        from ..data.prep_openr1 import main
    else:
        from ..data.prep_toolace import main
    return main(args.argv)
