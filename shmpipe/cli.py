"""The ``shmpipe`` command: run, config show, status, clean, asapo-standalone."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from shmpipe.config import ConfigError, PipelineConfig, load_config, read_toml, to_toml
from shmpipe.engine import exit_codes

log = logging.getLogger("shmpipe.cli")


EPILOG = """examples:
  shmpipe run --workers 2 --source sim --frames 1000 --sink hdf5 --output out.h5
  shmpipe run --config beamline.toml --set kernels.integrate.bins=2000 --set run.name=test-b
  shmpipe config show --config beamline.toml
  shmpipe status            # pipelines running on this machine
  shmpipe view NAME --port 8081   # the live web view of a running pipeline
  shmpipe bench --workers 1,2 --output bench-report   # what this node sustains
"""


def _add_config_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (each overrides the file)")
    g.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    g.add_argument("--workers", "-w", type=int, metavar="N", help="worker processes (run.workers)")
    g.add_argument("--source", metavar="KIND", help="source kind: sim, files, asapo (source.kind)")
    g.add_argument("--frames", type=int, metavar="N", help="frames per stream (source.frames)")
    g.add_argument(
        "--sink", metavar="KIND", help="one sink of this kind replaces [[sinks]]: hdf5, null, asapo"
    )
    g.add_argument("--output", "-o", metavar="PATH", help="the first sink's output")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any key, e.g. --set kernels.integrate.npt=2000 (repeatable)",
    )


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Merge the file and the command-line options into a validated configuration."""
    raw = read_toml(args.config) if args.config else {}
    sets: list[str] = []
    labels: list[str] = []

    def given(assignment: str, label: str) -> None:
        sets.append(assignment)
        labels.append(label)

    if args.workers is not None:
        given(f"run.workers={args.workers}", f"--workers {args.workers}")
    if args.source is not None:
        if raw.get("source", {}).get("kind", args.source) != args.source:
            raw["source"] = {}  # another kind's keys would be unknown to this one
        given(f"source.kind={_quote(args.source)}", f"--source {args.source}")
    if args.frames is not None:
        given(f"source.frames={args.frames}", f"--frames {args.frames}")
    if args.sink is not None:
        raw["sinks"] = [{}]  # the kind, set below, is the command line's (named in errors)
        given(f"sinks.0.kind={_quote(args.sink)}", f"--sink {args.sink}")
    if args.output is not None:
        if not raw.get("sinks"):
            raw["sinks"] = [{"kind": "hdf5"}]
        given(f"sinks.0.output={_quote(args.output)}", f"--output {args.output}")
    for assignment in args.overrides:
        given(assignment, f"--set {assignment}")
    cfg = load_config(args.config, sets, raw=raw, labels=labels)
    if getattr(args, "reprocess", False):
        if not hasattr(cfg.source.params, "reprocess"):
            raise ConfigError(
                f"a {cfg.source.kind} source keeps no consumer group: every run reads from the "
                'start (--reprocess is for source.kind = "asapo")',
                "source.kind",
                "command line (--reprocess)",
            )
        cfg.source.params.reprocess = True
    return cfg


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def cmd_run(args: argparse.Namespace) -> int:
    from shmpipe.engine.resources import warn_about_resources
    from shmpipe.engine.supervisor import Pipeline, StartupError
    from shmpipe.observe.logs import configure_logging

    cfg = config_from_args(args)
    if args.log_format:
        cfg.run.log_format = args.log_format
    if args.progress:
        cfg.run.progress = args.progress
    configure_logging(cfg.run.log_format, cfg.run.log_level)
    for note in cfg.notes:
        log.info("%s", note)
    warn_about_resources(cfg.run.workers)
    # Until the supervisor takes signals over, SIGTERM stops the start-up like Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        summary = Pipeline(cfg).run()
    except StartupError as exc:
        print(f"shmpipe: cannot start: {exc}", file=sys.stderr)
        return exit_codes.EXIT_CONFIG_ERROR
    except _Terminated:
        print("shmpipe: stopped by SIGTERM during start-up", file=sys.stderr)
        return exit_codes.EXIT_SIGTERM
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(summary.describe(), file=sys.stderr)
    if summary.error:
        print(f"shmpipe: {summary.error}", file=sys.stderr)
    elif summary.exit_code in (exit_codes.EXIT_SIGINT, exit_codes.EXIT_SIGTERM):
        print(
            "shmpipe: stopped early by "
            f"{'Ctrl-C (SIGINT)' if summary.exit_code == exit_codes.EXIT_SIGINT else 'SIGTERM'}: "
            "no new messages were taken; the frames in flight were finished",
            file=sys.stderr,
        )
    elif summary.exit_code == exit_codes.EXIT_FRAME_ERRORS:
        print(
            f"shmpipe: {summary.errors} of {summary.frames_in} frames became error records "
            "(stored by the sinks beside the results)",
            file=sys.stderr,
        )
    return summary.exit_code


class _Terminated(BaseException):
    """SIGTERM before the supervisor handles signals; a BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way (logging's, for one) swallows it."""


def _terminated(signum, frame) -> None:  # noqa: ARG001
    raise _Terminated


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    for note in cfg.notes:
        print(f"shmpipe: {note}", file=sys.stderr)
    sys.stdout.write(to_toml(cfg.effective()))
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    from shmpipe.config.reference import generate_reference

    text = generate_reference()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from shmpipe.observe.runs import live_runs, sweep_stale

    lines = sweep_stale()
    for line in lines:
        print(line)
    live = live_runs()
    if not lines:
        print(
            "nothing to clean: no records of dead runs (the rings themselves are nameless "
            "memfd regions and vanish with their processes)"
        )
    for info in live:
        print(f"running: {info['name']} (pid {info['pid']}) — left alone")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    from shmpipe.results import describe_asapo, describe_file
    from shmpipe.results.report import format_description

    if args.asapo:
        if not (args.beamtime and args.data_source):
            print("shmpipe results: --asapo needs --beamtime and --data-source", file=sys.stderr)
            return 2
        docs = [describe_asapo(args.asapo, args.beamtime, args.data_source, args.token)]
    elif args.paths:
        docs = []
        for path in args.paths:
            problem = _unreadable_results_file(path)
            if problem:
                print(f"shmpipe results: {path}: {problem}", file=sys.stderr)
                return 1
            try:
                docs.append(describe_file(path))
            except (OSError, KeyError) as exc:
                print(f"shmpipe results: {path}: {exc}", file=sys.stderr)
                return 1
    else:
        print("shmpipe results: give a results file or --asapo ENDPOINT", file=sys.stderr)
        return 2
    for doc in docs:
        print(format_description(doc, show_config=args.config, show_all=args.all))
    return 0


def _unreadable_results_file(path: str) -> str:
    """Why ``path`` cannot be a results file, in words (h5py's own are errno dumps), or ""."""
    import os

    import h5py

    if not os.path.lexists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a directory, not a results file"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    if not h5py.is_hdf5(path):
        return "not an HDF5 file (shmpipe results reads the files of the hdf5 sink)"
    return ""


def cmd_status(args: argparse.Namespace) -> int:
    from shmpipe.observe.status import print_status

    return print_status(args.name)


def cmd_asapo_standalone(args: argparse.Namespace) -> int:
    from shmpipe.asapo.command import run

    return run(args, args.asapo_parser)


def cmd_bench(args: argparse.Namespace) -> int:
    from shmpipe.benchmark import SuiteOptions, print_summary, run_suite

    opts = SuiteOptions(output=Path(args.output), quick=args.quick, frames=args.frames or 0)
    if args.workers:
        opts.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.no_cold_start:
        opts.cold_start = False
    if args.beamline:
        from shmpipe.benchmark.suite import run_beamline_alone

        run_beamline_alone(opts, log=lambda s: print(s, file=sys.stderr))
        print((opts.output / "report.md").read_text())
        print(f"report: {opts.output / 'report.json'}")
        return 0
    report = run_suite(opts, log=lambda s: print(s, file=sys.stderr))
    print_summary(report)
    print(f"report: {opts.output / 'report.json'}")
    return 0


def version_text() -> str:
    """``shmpipe 0.1.0 (commit abc123, Python 3.11.4)``: what a bug report should quote."""
    import platform

    from shmpipe.api import provenance

    commit = provenance.git_commit()
    where = (
        f"commit {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}, " if commit else ""
    )
    return f"shmpipe {provenance.version()} ({where}Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for (the commit costs a few git calls)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ARG002
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmpipe",
        description="Reduce detector frames in near real time: a dispatcher pulls messages into "
        "shared-memory slots, N workers run Numba kernels on them in place, a publisher writes "
        "the results and only then acknowledges the input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, nargs=0, help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run a pipeline",
        epilog=EPILOG + "\n" + exit_codes.HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_options(run)
    run.add_argument("--log-format", choices=["text", "json"], help="log lines as text or JSON")
    run.add_argument("--progress", choices=["auto", "on", "off"], help="live progress line")
    run.add_argument(
        "--reprocess",
        action="store_true",
        help="ASAPO: read the streams again from their first message, in a fresh consumer "
        "group (source.reprocess); source.group_id's progress is left as it was",
    )
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="inspect a configuration")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION")
    csub.required = True
    show = csub.add_parser("show", help="print the effective configuration as TOML")
    _add_config_options(show)
    show.set_defaults(func=cmd_config_show)
    reference = csub.add_parser(
        "reference", help="print the configuration reference (Markdown) generated from the schema"
    )
    reference.add_argument("--output", "-o", metavar="FILE", help="write it here instead")
    reference.set_defaults(func=cmd_config_reference)

    status = sub.add_parser(
        "status",
        help="show the processes of running pipelines",
        description="Attach to running pipelines (found by run.name) and print a table per "
        "process: role, pid, state, frames, busy %, CPU %, RSS, current message; then the "
        "per-stream counts.",
    )
    status.add_argument("name", nargs="?", help="run name (run.name); default: all")
    status.set_defaults(func=cmd_status)

    results = sub.add_parser(
        "results",
        help="print what a results file or ASAPO output stream holds",
        description="Streams, rows, message ids, errors, outputs with units, the runs that "
        "wrote them and the configuration; for files still being written, too.",
    )
    results.add_argument("paths", nargs="*", metavar="PATH", help="results files (HDF5)")
    results.add_argument("--asapo", metavar="ENDPOINT", help="read the ASAPO service here")
    results.add_argument("--beamtime", help="with --asapo: the beamtime")
    results.add_argument("--data-source", help="with --asapo: the output data source")
    results.add_argument("--token", default="", help="with --asapo: the access token")
    results.add_argument("--config", action="store_true", help="print each run's configuration")
    results.add_argument(
        "--all",
        action="store_true",
        help="list every result-shaping key (default: those that differ from the defaults)",
    )
    results.set_defaults(func=cmd_results)

    from shmpipe.view.command import add_parser as add_view_parser

    add_view_parser(sub)

    clean = sub.add_parser("clean", help="remove what dead runs left behind")
    clean.set_defaults(func=cmd_clean)

    asapo = sub.add_parser(
        "asapo-standalone",
        help="serve an ASAPO-compatible broker and "
        "receiver for the real asapo_consumer/asapo_producer clients",
    )
    from shmpipe.asapo.command import add_arguments as add_asapo_arguments

    add_asapo_arguments(asapo)
    asapo.set_defaults(func=cmd_asapo_standalone, asapo_parser=asapo)

    bench = sub.add_parser(
        "bench", help="measure what this node sustains: report.json and plots in --output"
    )
    bench.add_argument("--workers", metavar="N,M", help="worker counts to sweep (default 1..cores)")
    bench.add_argument("--frames", type=int, metavar="N", help="frames per throughput run")
    bench.add_argument("--output", "-o", default="bench-report", metavar="DIR", help="report dir")
    bench.add_argument("--quick", action="store_true", help="tiny frames: check, don't measure")
    bench.add_argument(
        "--no-cold-start", action="store_true", help="use the usual caches; no cold start-up"
    )
    bench.add_argument(
        "--beamline",
        action="store_true",
        help="only the beamline chain against the stitch-first chain, side by side",
    )
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"shmpipe: configuration error: {exc}", file=sys.stderr)
        return exit_codes.EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        return exit_codes.EXIT_SIGINT
    except BrokenPipeError:
        # The reader went away (``shmpipe results FILE | head``): no traceback about it.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
