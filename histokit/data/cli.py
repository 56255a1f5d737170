"""``histokit data download|verify|prepare|list|mock``: subcommands the top-level CLI registers with
:func:`add_data_subcommands`. Each handler returns an exit code (0 ok, 1 failure with a one-paragraph message)."""
from __future__ import annotations

import argparse
import sys

from .errors import DataError
from .manifests import list_manifests, load_manifest


def _cmd_list(args) -> int:
    if args.name:  # one dataset in detail: access, license, files, manual steps
        m = load_manifest(args.name)
        print(f"{m.name}: {m.title}\n  homepage {m.homepage}\n  access {m.access}; license {m.license['name']}"
              f" (redistributable: {m.redistributable})\n  layout {m.layout.type} in {m.layout.subdir or '.'}; "
              f"{len(m.classes)} classes; splits {m.splits['type']}; groups {m.groups['id']}")
        for f in m.files[:20]:
            print(f"  file {f.name}: {f.size or '?'} bytes, {dict(f.checksums) or 'no checksum'} ({f.checksum_source})")
        if len(m.files) > 20:
            print(f"  ... {len(m.files) - 20} more files")
        for i, step in enumerate(m.manual_steps, 1):
            print(f"  step {i}: {step.strip()}")
        return 0
    for name in list_manifests():
        m = load_manifest(name)
        lic = m.license["name"] + ("" if m.redistributable else ", not redistributable")
        print(f"{name:24s} {m.access:12s} {m.layout.type:14s} {lic}")
    return 0


def _limits(args) -> dict:
    """The download limits given on the command line (the library's defaults for the others)."""
    return {k: getattr(args, k) for k in ("deadline", "min_rate", "stall_window") if getattr(args, k, None) is not None}


def _cmd_download(args) -> int:
    from .download import download

    for p in download(args.name, args.root, progress=not args.quiet, **_limits(args)):
        print(p)
    return 0


def _cmd_verify(args) -> int:
    from .verify import verify

    report = verify(args.name, args.root, progress=not args.quiet, content=not getattr(args, "files_only", False))
    print(report.summary())
    return 0 if report.ok else 1


def _cmd_prepare(args) -> int:
    from .prepare import prepare

    print(prepare(args.name, args.root, progress=not args.quiet, **_limits(args)))
    return 0


def _cmd_mock(args) -> int:
    import time

    from .mock import MOCKABLE, mock_dataset

    names = list(MOCKABLE) if args.name == "all" else [args.name]
    start = time.perf_counter()
    results = []
    for name in names:
        result = mock_dataset(name, args.root, per_class=args.per_class, seed=args.seed, force=args.force)
        results.append(result)
        if not args.quiet:
            print(result.line(), flush=True)
    if args.name == "all":
        _mock_weights(args)
    written = [r for r in results if not r.skipped]
    total_mb = sum(r.bytes for r in results) / 1e6
    print(f"mock data: {len(written)} dataset(s) written, {len(results) - len(written)} up to date, "
          f"{sum(r.files for r in results)} files, {total_mb:.0f} MB under {args.root}, "
          f"{time.perf_counter() - start:.1f} s. Not real data: each folder holds MOCK_DATASET.txt.")
    return 0


def _mock_weights(args) -> None:
    """``mock all`` also writes every official checkpoint a recipe names, in the official layout with seeded random
    weights, to ROOT/weights/<name>.MOCK.pth: a rehearsal loads them through the same path as the real files.
    Compact: the 65,536-way DINO / EsViT heads (which the kit drops on loading) shrink; every backbone tensor is exact."""
    import time
    from pathlib import Path

    from ..models.checkpoints import recipe_checkpoint_names
    from ..models.official_layouts import write_all_official_mocks
    from ..papers import get_recipe, list_papers
    from ..preflight import MOCK_WEIGHTS_DIR

    names = sorted({n for paper in list_papers() for profile in ("smoke", "full")
                    for n in recipe_checkpoint_names(get_recipe(paper, profile))})
    start = time.perf_counter()
    files = write_all_official_mocks(Path(args.root) / MOCK_WEIGHTS_DIR, seed=args.seed, compact=True, names=names)
    if not args.quiet:
        size = sum(p.stat().st_size for p in files.values()) / 1e6
        print(f"mock weights: {', '.join(sorted(files))} ({size:.0f} MB, official layouts, random weights) in "
              f"{Path(args.root) / MOCK_WEIGHTS_DIR}, {time.perf_counter() - start:.1f} s", flush=True)


def _guard(handler):
    """Turn data-layer errors into a clear message on stderr and exit code 1 (no traceback)."""

    def run(args) -> int:
        try:
            return handler(args)
        except (DataError, OSError) as exc:
            print(f"histokit data {args.data_command}: {exc}", file=sys.stderr)
            return 1

    return run


def add_data_subcommands(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` and its subcommands on the top-level ``subparsers``; each sets ``args.func(args) -> int``."""
    data = subparsers.add_parser("data", help="download, verify and prepare datasets from data_manifests/")
    sub = data.add_subparsers(dest="data_command", required=True)
    for cmd, handler, help_ in [
        ("download", _cmd_download, "fetch a dataset's files (resumable, checksum-verified)"),
        ("verify", _cmd_verify, "check a dataset against its manifest: files, checksums, layout, every image decodes"),
        ("prepare", _cmd_prepare, "download + verify + extract"),
    ]:
        p = sub.add_parser(cmd, help=help_)
        p.add_argument("name", choices=list_manifests(), metavar="NAME", help="dataset (see `histokit data list`)")
        p.add_argument("--root", default=None, help="data root; the dataset lives in ROOT/NAME (default: "
                                                    "$HISTOKIT_DATA_ROOT or ~/histokit_data)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if cmd in ("download", "prepare"):
            from .download import DEFAULT_DEADLINE, DEFAULT_MIN_RATE, DEFAULT_STALL_WINDOW

            p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                           help=f"give up on a file after this long, retries included (default {DEFAULT_DEADLINE:g})")
            p.add_argument("--min-rate", type=float, default=None, metavar="BYTES_PER_S",
                           help=f"a transfer slower than this over --stall-window has stalled and is retried "
                                f"(default {DEFAULT_MIN_RATE:g}; 0 turns the check off)")
            p.add_argument("--stall-window", type=float, default=None, metavar="SECONDS",
                           help=f"the window --min-rate is averaged over (default {DEFAULT_STALL_WINDOW:g})")
        if cmd == "verify":
            p.add_argument("--files-only", action="store_true",
                           help="check only the manifest's files (size, checksum), not the layout folder's images")
        p.set_defaults(func=_guard(handler))
    from .mock import DEFAULT_PER_CLASS, MOCKABLE

    p = sub.add_parser("mock", help="write small mock datasets in the real releases' layouts (rehearsal only)",
                       description="Write, under ROOT/<dataset>/, a small dataset with the real release's folder and "
                                   "file names, image sizes and formats, built from the bundled Kather 2016 tiles "
                                   "(seeded, deterministic), for rehearsing the full profile. Not real data: each "
                                   "folder holds MOCK_DATASET.txt; a folder without it is never overwritten.")
    p.add_argument("name", choices=list(MOCKABLE) + ["all"], metavar="NAME|all",
                   help=f"dataset to mock, or all ({', '.join(MOCKABLE)})")
    p.add_argument("--root", required=True, help="data root to write into (ROOT/NAME); required, so a mock never "
                                                 "lands in the real data root by default")
    p.add_argument("--per-class", type=int, default=None,
                   help=f"images per class per official split (default {DEFAULT_PER_CLASS}); datasets without an "
                        "official split get twice as many, so a stratified 80/10/10 split reaches every class")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (same seed and counts -> same files)")
    p.add_argument("--force", action="store_true", help="rewrite a mock that has the same parameters")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    p.set_defaults(func=_guard(_cmd_mock))
    p = sub.add_parser("list", help="list the datasets the kit knows, or show one in detail")
    p.add_argument("name", nargs="?", choices=list_manifests(), metavar="NAME", help="show this dataset in detail")
    p.set_defaults(func=_guard(_cmd_list))
    return data


def main(argv=None) -> int:
    """Stand-alone entry (``python -m histokit.data.cli data verify kather2016_tiny``), used by the tests."""
    parser = argparse.ArgumentParser(prog="histokit")
    add_data_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
