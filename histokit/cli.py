"""The ``histokit`` command: ``reproduce``, ``data``, ``list``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def _parse_pairs(pairs: Sequence[str], flag: str) -> dict:
    out = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"histokit: {flag} expects NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .papers import list_papers
    from .runner import RunnerError, reproduce

    papers = list_papers() if args.paper == "all" else [args.paper]
    extra = _parse_pairs(args.param, "--param")
    checkpoints = _parse_pairs(args.checkpoint, "--checkpoint")
    if checkpoints:
        extra["checkpoints"] = checkpoints
    for paper in papers:
        try:
            reproduce(paper, args.profile, data_root=args.data_root, run_dir=args.run_dir if len(papers) == 1 else None,
                      device=args.device, seed=args.seed, only=args.only, start=args.start, force=args.force,
                      extra=extra, log_output=args.verbose)
        except (RunnerError, ValueError) as exc:
            print(f"histokit: {exc}", file=sys.stderr)
            return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .data.manifests import list_manifests
    from .models.backbones import list_encoders
    from .papers import list_papers
    from .runner import STAGES

    print("papers:   ", ", ".join(list_papers()))
    print("stages:   ", ", ".join(STAGES))
    print("datasets: ", ", ".join(list_manifests()))
    print("encoders: ", ", ".join(list_encoders()), "+ any timm model name")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="histokit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="run a paper's stage notebooks and publish its tables")
    rep.add_argument("paper", help="esvit | chen2022 | cyphervit | lgffem | all")
    rep.add_argument("--profile", default="smoke", help="smoke (bundled tiles, CPU, minutes) or full (paper settings)")
    rep.add_argument("--data-root", default=None, help="where datasets live (default $HISTOKIT_DATA_ROOT or ~/histokit_data)")
    rep.add_argument("--run-dir", default=None, help="scratch directory (default runs/<paper>/<profile>)")
    rep.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (e.g. 04 05 or index evaluate)")
    rep.add_argument("--from", dest="start", metavar="STAGE", help="start at this stage")
    rep.add_argument("--force", action="store_true", help="re-run stages that finished with the same parameters")
    rep.add_argument("--checkpoint", action="append", metavar="NAME=PATH", help="official weights, e.g. esvit=/w/esvit.pth")
    rep.add_argument("--param", action="append", metavar="NAME=VALUE", help="extra notebook parameter (must be declared)")
    rep.add_argument("--verbose", action="store_true", help="stream the notebooks' output")
    rep.set_defaults(func=cmd_reproduce)

    lst = sub.add_parser("list", help="papers, stages, datasets and encoders the kit knows")
    lst.set_defaults(func=cmd_list)

    from .data.cli import add_data_subcommands

    add_data_subcommands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
