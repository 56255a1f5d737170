"""The ``histokit`` command: ``reproduce``, ``data``, ``list``, ``report``, ``benchmark``, ``audit``, ``speed``,
``doctor``, ``gpucheck``, ``init``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence


def _parse_pairs(pairs: Sequence[str], flag: str) -> dict:
    out = {}
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"histokit: {flag} expects NAME=VALUE, got {pair!r}")
        out[name] = value
    return out


def _distributed_flags(args: argparse.Namespace) -> dict:
    """torchrun flags for the training runs of stages 02/03 and the sharded extraction of 04 ({} = one process)."""
    flags = {}
    for key in ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend",
                "rdzv_endpoint", "rdzv_id"):
        value = getattr(args, key, None)
        if value is not None:
            flags[key] = value
    if flags and flags.get("nproc_per_node", 1) <= 1 and flags.get("nnodes", 1) <= 1:
        return {}
    return flags


def _rehearsal_caps(args: argparse.Namespace):
    """False (not a rehearsal), or the rehearsal's caps: the defaults with any --rehearse-* given."""
    from .runner import REHEARSAL_CAPS

    if not args.rehearse:
        return False
    flags = {"max_steps": ("--rehearse-steps", args.rehearse_steps),
             "max_images_per_class": ("--rehearse-images", args.rehearse_images),
             "max_train_images": ("--rehearse-train-images", args.rehearse_train_images)}
    for flag, value in flags.values():
        if value is not None and value < 1:
            raise SystemExit(f"histokit: {flag} must be >= 1, got {value}")
    return {**REHEARSAL_CAPS, **{k: v for k, (_, v) in flags.items() if v is not None}}


def cmd_reproduce(args: argparse.Namespace) -> int:
    from . import paths
    from .kernel import WarmKernel
    from .runner import kernel_env

    if args.rehearse and args.profile != "full":
        print("histokit: --rehearse rehearses the full profile: add --profile full", file=sys.stderr)
        return 2
    if args.keep_checkpoints:  # read by stages/train.py in the kernels and torchrun ranks this process starts
        os.environ["HISTOKIT_KEEP_CHECKPOINTS"] = "1"
    # One kernel for every stage of every paper: torch, timm and the kit are imported once, not 28 times, and
    # while this process reads the recipes and runs its checks.
    kernel = None
    if not (args.check or args.fresh_kernels):
        kernel = WarmKernel(cwd=paths.NOTEBOOK_DIR, env=kernel_env(args.quiet))
        kernel.prewarm()
    try:
        return _reproduce(args, kernel)
    finally:
        if kernel is not None:
            kernel.shutdown()


def _reproduce(args: argparse.Namespace, kernel) -> int:
    from .papers import get_recipe, list_papers
    from .preflight import PreflightError, check_run, format_missing, validate_checkpoints
    from .runner import RunnerError, reproduce

    from .runner import RUNNER_PARAMS, describe_os_error

    papers = list_papers() if args.paper == "all" else [args.paper]
    extra = _parse_pairs(args.param, "--param")
    for name in extra:  # paper, profile, run_dir, ...: the run's identity and the runner's own parameters
        if name in RUNNER_PARAMS:
            print(f"histokit: --param {name}=... is refused: the runner sets {name} for every stage (what it prints "
                  f"is what the stages compute); use {RUNNER_PARAMS[name]}", file=sys.stderr)
            return 2
    checkpoints = _parse_pairs(args.checkpoint, "--checkpoint")
    try:
        recipes = [get_recipe(p, args.profile) for p in papers]
        # Every --checkpoint is checked against every selected recipe before any stage of any paper runs.
        validate_checkpoints(checkpoints, recipes)
    except (PreflightError, ValueError) as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    if args.check:
        status = 0
        for recipe in recipes:
            missing = check_run(recipe, args.data_root, checkpoints, rehearse=args.rehearse)
            print(format_missing(recipe, missing) if missing else f"{recipe.paper} / {recipe.profile}: ready "
                  "(every dataset and weight file is in place)")
            status = status or (1 if missing else 0)
        return status
    from .kernel import KernelError
    from .preflight import checkpoint_names
    from .run_log import estimate_seconds
    from .runner import result_label, select_stages

    label = result_label(args.profile, bool(args.rehearse))
    stages = select_stages(args.only, args.start)
    estimates = [estimate_seconds(p, label, stages) for p in papers]
    started, published, verify_status = time.monotonic(), [], 0
    for i, (paper, recipe) in enumerate(zip(papers, recipes)):
        own = {k: v for k, v in checkpoints.items() if k in checkpoint_names(recipe)}
        later = estimates[i + 1:]
        if args.verify:  # read before anything runs: the publication this run will replace (the committed one)
            from . import paths
            from .results_verify import read_run_json, snapshot_tables

            committed = snapshot_tables(paths.results_dir(paper, label))
            committed_run = read_run_json(paths.results_dir(paper, label))
        try:
            result = reproduce(paper, args.profile, data_root=args.data_root,
                               run_dir=args.run_dir if len(papers) == 1 else None,
                               device=args.device, seed=args.seed, only=args.only, start=args.start,
                               force=args.force, extra={**extra, **({"checkpoints": own} if own else {})},
                               log_output=args.verbose, rehearse=_rehearsal_caps(args),
                               distributed=_distributed_flags(args), kernel=kernel,
                               fresh_kernels=args.fresh_kernels, quiet=args.quiet,
                               later_s=None if None in later else sum(later))
        except (RunnerError, KernelError, ValueError) as exc:
            print(f"histokit: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # whatever the runner did not name itself: still one line, the path and what to do
            print(f"histokit: {paper}: {describe_os_error(exc)}", file=sys.stderr)
            return 1
        published.append((paper, result.results_dir))
        if args.verify:
            from .results_verify import verify_publication

            if result.results_dir is None:
                print(f"histokit: --verify {paper}: the run published nothing to compare", file=sys.stderr)
                verify_status = 1
            else:
                verify_status |= verify_publication(paper, committed, committed_run, result.results_dir,
                                                    say=lambda line: print(line, flush=True))
    if kernel is not None:
        kernel.shutdown()  # the benchmark, audit and report below run here, not in the kernel
    status = _after_reproduce(args)
    _print_summary(published, time.monotonic() - started)
    return status or verify_status


def _print_summary(published: list, seconds: float) -> None:
    """Where a reader finds what the command made (printed with --quiet too)."""
    from . import paths
    from .run_log import format_duration
    from .paths import portable

    print(f"[histokit] finished in {format_duration(seconds)}. Tables and figures:")
    for paper, folder in published:
        if folder is None:
            print(f"  {paper:10s} not published (see the lines above)")
            continue
        files = sorted(f.name for f in folder.iterdir() if f.suffix in (".md", ".png"))
        print(f"  {paper:10s} {portable(str(folder.resolve()))}/  {', '.join(files)}")
    report = paths.RESULTS_DIR / "REPORT.md"
    if report.exists():
        print(f"  {'report':10s} {portable(str(report.resolve()))} and "
              f"{portable(str((paths.RESULTS_DIR / 'report.html').resolve()))}")


def _after_reproduce(args: argparse.Namespace) -> int:
    """Every paper ran: the common benchmark and the leakage audit across them, then the report (each step runs
    even when one before it failed, and any failure makes the exit status nonzero). One paper: only the report."""
    from . import paths

    steps = []
    if args.paper == "all" and not getattr(args, "rehearse", False):  # cross-paper steps read smoke/full runs
        steps += [("common benchmark", lambda: _benchmark(args.profile)),
                  ("leakage audit", lambda: _audit(args.profile, args.data_root))]
    partial = bool(getattr(args, "only", None) or getattr(args, "start", None))
    if partial and not paths.RESULTS_DIR.is_dir():  # `--only 01 02` in a fresh work directory: nothing to report
        print(f"[histokit] report: not written, nothing is published yet ({paths.RESULTS_DIR} does not exist)")
    else:
        steps.append(("report", lambda: _report(paths.RESULTS_DIR)))
    status = 0
    for name, step in steps:
        try:
            step()
        except Exception as exc:  # the papers' results are already published; say which summary step failed
            print(f"histokit: {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            status = 1
    return status


def _benchmark(profile: str) -> None:
    from .crosspaper import run_benchmark

    out = run_benchmark(profile)
    print(f"[histokit] common benchmark: {out['md']}, {out['csv']} and {out['heatmap']}")


def _audit(profile: str, data_root: Optional[str]) -> None:
    from .crosspaper import run_leakage_audit

    out = run_leakage_audit(profile, data_root=data_root)
    print(f"[histokit] leakage audit: {out['md']}, {out['csv']} and {len(out['figures'])} figure(s)")


def _report(results_dir, profile: Optional[str] = None) -> None:
    from .report import write_report
    from .report.embed import default_cache_dir

    md_path, html_path = write_report(results_dir, profile, figure_cache_dir=default_cache_dir())
    print(f"[histokit] report: {md_path} and {html_path}")


def cmd_benchmark(args: argparse.Namespace) -> int:
    from .models.encoder_spec import EncoderSpecError
    from .runner import RunnerError

    try:
        if args.encoder:
            from .crosspaper import run_benchmark

            out = run_benchmark(args.profile, encoders=args.encoder, data_root=args.data_root, device=args.device)
            print(f"[histokit] common benchmark with your encoders: {out['md']}, {out['csv']} and {out['heatmap']}")
        else:
            _benchmark(args.profile)
    except (FileNotFoundError, ValueError, EncoderSpecError, RunnerError) as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    try:
        _audit(args.profile, args.data_root)
    except (FileNotFoundError, ValueError) as exc:
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
    # The papers' encoders first; the smoke profile's reduced variants and the kit's own tiny test variants
    # (``*_test``, for CI) on their own lines, so a reader does not take them for models of the papers.
    encoders = list_encoders()
    tests = [e for e in encoders if e.endswith("_test")]
    smoke = [e for e in encoders if e.endswith("_smoke")]
    papers_own = [e for e in encoders if e not in tests and e not in smoke]
    print("encoders: ", ", ".join(papers_own), "+ any timm model name")
    print("smoke:    ", ", ".join(smoke), "(reduced variants the smoke profile trains)")
    print("test:     ", ", ".join(tests), "(internal: tiny variants for the kit's own tests)")
    from .models.checkpoints import OFFICIAL_WEIGHTS

    print("weights:  ", ", ".join(sorted(OFFICIAL_WEIGHTS)), "(--checkpoint NAME=PATH)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    try:
        md_path, html_path = write_report(args.results_dir, args.profile)
    except (FileNotFoundError, ValueError) as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    print(f"[histokit] report: {md_path} and {html_path}")
    return 0


class SpeedBenchmarkMissing(RuntimeError):
    """``histokit speed`` outside a checkout: the speed benchmark lives in ``benchmarks/speed/``, not in the package."""


def speed_benchmark(repo_dir=None):
    """The speed benchmark (``benchmarks/speed/`` of the checkout ``repo_dir``, default the clone's), imported; it is
    no part of the installed package (issue 18), so a pip-installed histokit gets :class:`SpeedBenchmarkMissing`."""
    import importlib

    from . import paths

    repo = Path(repo_dir) if repo_dir is not None else paths.REPO_DIR
    folder = repo / "benchmarks" / "speed"
    if not (folder / "__init__.py").is_file():
        raise SpeedBenchmarkMissing(
            f"histokit speed runs the speed benchmark of a histokit checkout, and {folder} does not exist (a "
            "pip-installed histokit ships no benchmarks): clone the repository and run `make speed` there")
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    module = importlib.import_module("benchmarks.speed")
    if Path(module.__file__).resolve().parent != folder.resolve():
        raise SpeedBenchmarkMissing(f"`import benchmarks.speed` found {module.__file__}, not {folder}: another "
                                    "`benchmarks` package shadows the checkout's")
    return module


def cmd_speed(args: argparse.Namespace) -> int:
    try:
        out = speed_benchmark().run_bench(args.out, device=args.device, quick=args.quick)
    except (ValueError, SpeedBenchmarkMissing) as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    print(f"[histokit] speed: {out['md']} and {out['csv']}")
    for t in out["targets"]:
        print(f"  {t.target}: {t.measured} -> {t.status}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import run_doctor

    text, status = run_doctor()
    print(text)
    return status


def cmd_gpucheck(args: argparse.Namespace) -> int:
    from .gpucheck import run_gpucheck

    try:
        out = run_gpucheck(args.out, device=args.device)
    except ValueError as exc:
        print(f"histokit: {exc}", file=sys.stderr)
        return 1
    print(f"[histokit] gpucheck: {out['path']} ({out['seconds']:.0f} s)")
    return out["status"]


def _add_speed_options(p: argparse.ArgumentParser, default_out) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", default=None, help=f"report folder (default {default_out})")
    p.add_argument("--quick", action="store_true", help="every section at smoke sizes (about a minute)")
    p.set_defaults(func=cmd_speed)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="histokit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"histokit {__version__}")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="where runs/ and results/ live (default: the clone's own; for an installed histokit "
                             "the directory `histokit init` made, else the current one)")
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
    rep.add_argument("--checkpoint", action="append", metavar="NAME=PATH", help="official weights, e.g. esvit_swin_tiny=/w/checkpoint_best.pth (histokit list shows the names)")
    rep.add_argument("--param", action="append", metavar="NAME=VALUE", help="extra notebook parameter (must be declared)")
    talk = rep.add_mutually_exclusive_group()
    talk.add_argument("--verbose", action="store_true", help="stream the notebooks' output as well")
    talk.add_argument("--quiet", action="store_true",
                      help="print only errors and the final summary (no stage lines, no progress bars)")
    rep.add_argument("--keep-checkpoints", action="store_true",
                     help="keep each finished training run's resume checkpoint (student, teacher, heads, optimizer; "
                          "0.7-1 GB a full-size run) beside its encoder.pt; by default it is removed once the run "
                          "has finished")
    rep.add_argument("--fresh-kernels", action="store_true",
                     help="start a new Jupyter kernel for every stage (default: one warm kernel for the whole "
                          "command, its namespace cleared between stages; same results, 10-15 s less per stage)")
    rep.add_argument("--rehearse", action="store_true",
                     help="with --profile full: the full recipe (full-size models, every run, table and figure) "
                          "with only the optimisation steps and images per class capped, e.g. on `histokit data "
                          "mock` data; results go to results/<paper>/rehearsal/")
    rep.add_argument("--rehearse-steps", type=int, default=None, metavar="N",
                     help="rehearsal: optimisation steps per training run (default 1)")
    rep.add_argument("--rehearse-images", type=int, default=None, metavar="N",
                     help="rehearsal: images per class in each split (default 3)")
    rep.add_argument("--rehearse-train-images", type=int, default=None, metavar="N",
                     help="rehearsal: images a training run reads, which bounds its batch (default 4)")
    rep.add_argument("--verify", action="store_true",
                     help="after the run, compare each paper's published CSV tables cell by cell with the ones "
                          "that were at results/<paper>/<profile>/ when the command started (in a fresh clone: the "
                          "committed ones, read before the run replaces them) and name every cell that differs "
                          "(table, row, column, committed and new value); exit 1 if any differs. Not compared: "
                          "timing.csv, and columns / records.csv metrics naming ms, seconds, latency, timing, "
                          "duration, throughput, device or backend")
    rep.add_argument("--check", action="store_true",
                     help="list every missing dataset and weight file (with the manual steps) and exit; runs nothing")
    dist = rep.add_argument_group("multi-GPU / multi-node (torchrun) for the training runs and the extraction")
    dist.add_argument("--nproc-per-node", type=int, default=None, metavar="N", help="processes (GPUs) per node")
    dist.add_argument("--nnodes", type=int, default=None, metavar="N", help="number of nodes")
    dist.add_argument("--node-rank", type=int, default=None, metavar="R", help="this node's rank")
    dist.add_argument("--master-addr", default=None, help="rank 0's address (static rendezvous)")
    dist.add_argument("--master-port", type=int, default=None, help="rank 0's port (static rendezvous)")
    dist.add_argument("--rdzv-backend", default=None, help="torchrun rendezvous backend, e.g. c10d")
    dist.add_argument("--rdzv-endpoint", default=None, help="torchrun rendezvous endpoint HOST:PORT")
    dist.add_argument("--rdzv-id", default=None, help="torchrun rendezvous job id")
    rep.set_defaults(func=cmd_reproduce)

    lst = sub.add_parser("list", help="papers, stages, datasets and encoders the kit knows")
    lst.set_defaults(func=cmd_list)

    from .paths import RESULTS_DIR

    rpt = sub.add_parser("report", help="write results/REPORT.md and a self-contained results/report.html")
    rpt.add_argument("--results-dir", default=RESULTS_DIR, help=f"results folder to report on (default {RESULTS_DIR})")
    rpt.add_argument("--profile", default=None, help="only this profile (default: every profile)")
    rpt.set_defaults(func=cmd_report)

    cbench = sub.add_parser("benchmark", help="every paper's models on every data under one protocol -> "
                                              "results/benchmark/<profile>/")
    cbench.add_argument("--profile", default="smoke", help="the runs to read: runs/<paper>/<profile>/ (default smoke)")
    cbench.add_argument("--encoder", action="append", default=[], metavar="SPEC",
                        help="add your encoder's rows (as histokit evaluate takes them: timm:NAME | hf-hub:ORG/REPO | "
                             "open_clip:hf-hub:ORG/REPO | local:PATH@TIMM_ARCH | package.module:function; "
                             "repeatable) -> "
                             "results/evaluate/benchmark/<profile>/")
    cbench.add_argument("--data-root", default=None, help="where datasets live (for your encoders' features)")
    cbench.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (for your encoders' features)")
    cbench.set_defaults(func=cmd_benchmark)

    audit = sub.add_parser("audit", help="train/test near-duplicate (leakage) audit of the runs' data -> "
                                         "results/leakage/<profile>/")
    audit.add_argument("--profile", default="smoke", help="the runs to read: runs/<paper>/<profile>/ (default smoke)")
    audit.add_argument("--data-root", default=None, help="where datasets live (default $HISTOKIT_DATA_ROOT or "
                                                         "~/histokit_data)")
    audit.set_defaults(func=cmd_audit)

    speed = sub.add_parser("speed", help="how fast the kit is (extraction, decoding, search, metrics, latency) "
                                         "-> results/speed/<device>.md + .csv")
    _add_speed_options(speed, RESULTS_DIR / "speed")

    doctor = sub.add_parser("doctor", help="driver, CUDA runtime, torch / torchvision / faiss builds and GPUs; "
                                           "warns (exit 1) where they do not fit together")
    doctor.set_defaults(func=cmd_doctor)

    gpucheck = sub.add_parser("gpucheck", help="the GPU path in minutes: full-size DINO / EsViT steps, bf16 vs fp32, "
                                               "resume on fewer GPUs, batch-1 latency, GPU vs CPU search -> "
                                               "results/speed/gpucheck-<gpu>.md (reduced on a CPU)")
    gpucheck.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    gpucheck.add_argument("--out", default=None, help=f"report folder (default {RESULTS_DIR / 'speed'})")
    gpucheck.set_defaults(func=cmd_gpucheck)

    from .data.cli import add_data_subcommands
    from .workdir import add_init_subcommand

    add_data_subcommands(sub)
    add_init_subcommand(sub)
    from .byo import add_parser as add_evaluate_subcommand  # histokit evaluate --encoder SPEC (histokit/byo.py)

    add_evaluate_subcommand(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .workdir import apply_workdir

    apply_workdir(argv)  # before any folder default is read (histokit/workdir.py)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
