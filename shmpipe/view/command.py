"""``shmpipe view``: serve the live view for a running pipeline, or for ASAPO data sources."""

from __future__ import annotations

import argparse
import signal
import sys

from shmpipe.config.schema import ViewSection
from shmpipe.observe.runs import live_runs


def add_parser(sub) -> None:
    view = sub.add_parser(
        "view",
        help="serve the live web view of a running pipeline (or of ASAPO data sources)",
        description="Attach the live web view to a pipeline running on this machine (found by "
        "run.name, as status does), or with --asapo read the results that every node of a "
        "consumer group published, with a consumer group of the view's own.",
    )
    view.add_argument("name", nargs="?", help="run name (run.name) of a running pipeline")
    view.add_argument("--port", type=int, default=8080, help="HTTP port (8080)")
    view.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    view.add_argument("--zmq", default="", help="also publish images for lavue (tcp://*:5555)")
    view.add_argument("--image", default="", help="output shown as the image by default")
    view.add_argument("--max-fps", type=float, default=10.0, help="pushes per second (10)")
    a = view.add_argument_group("ASAPO (instead of NAME)")
    a.add_argument("--asapo", metavar="HOST:PORT", help="ASAPO endpoint")
    a.add_argument("--beamtime", help="beamtime id")
    a.add_argument("--data-source", action="append", help="results data source (repeatable)")
    a.add_argument("--raw-data-source", help="the detector's data source (read with get_last)")
    a.add_argument(
        "--raw-part-shape", default="516,1556", help="rows,columns of one raw module (516,1556)"
    )
    a.add_argument("--raw-dtype", default="uint16", help="dtype of the raw modules (uint16)")
    a.add_argument(
        "--geometry",
        metavar="FILE",
        default="",
        help="detector geometry file the raw modules are placed with (default: built-in layout)",
    )
    a.add_argument("--token", default="", help="ASAPO token")
    a.add_argument("--group", default="", help="consumer group (default: a new one)")
    view.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from shmpipe.view.process import ViewPortError, open_view_socket, serve

    settings = ViewSection(
        port=args.port, host=args.host, max_hz=args.max_fps, zmq=args.zmq, image=args.image
    )
    if args.asapo:
        if args.name:
            print("shmpipe view: give a run name or --asapo, not both", file=sys.stderr)
            return 2
        if not args.beamtime or not args.data_source:
            print("shmpipe view: --asapo needs --beamtime and --data-source", file=sys.stderr)
            return 2
        from shmpipe.view.asapo_feed import AsapoFeed

        try:
            shape = tuple(int(n) for n in args.raw_part_shape.split(","))
            if len(shape) != 2:
                raise ValueError
        except ValueError:
            print("shmpipe view: --raw-part-shape takes ROWS,COLUMNS", file=sys.stderr)
            return 2
        geometry = None
        if args.geometry:
            from native_kernels.geometry import load_geometry

            try:
                geometry = load_geometry(args.geometry)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                print(f"shmpipe view: --geometry: {exc}", file=sys.stderr)
                return 2
        try:
            feed = AsapoFeed(
                args.asapo,
                args.beamtime,
                args.data_source,
                raw_source=args.raw_data_source or "",
                token=args.token,
                group=args.group,
                raw_part_shape=shape,
                raw_dtype=args.raw_dtype,
                max_hz=args.max_fps,
            )
        except Exception as exc:  # noqa: BLE001 - wrong endpoint, beamtime or token
            print(f"shmpipe view: cannot read ASAPO: {exc}", file=sys.stderr)
            return 1
        feed.geometry = geometry
    else:
        from shmpipe.view.feed import TapFeed

        runs = [r for r in live_runs() if args.name is None or r["name"] == args.name]
        if not runs:
            named = f" named {args.name!r}" if args.name else ""
            print(f"shmpipe view: no running pipeline{named} on this machine", file=sys.stderr)
            return 1
        if len(runs) > 1:
            names = ", ".join(r["name"] for r in runs)
            print(f"shmpipe view: several pipelines run here ({names}); name one", file=sys.stderr)
            return 2
        try:
            feed = TapFeed.attach(runs[0])
        except (LookupError, OSError) as exc:
            print(f"shmpipe view: cannot attach: {exc}", file=sys.stderr)
            return 1
        if feed.tap.run.get("reducers"):  # the run's reducers, from their checkpoint
            from shmpipe.reduce.live import LiveReduced
            from shmpipe.reduce.setup import config_of_identity
            from shmpipe.view.reduced import ReducedFeed

            cfg = config_of_identity(feed.tap.run["reducers"])
            feed = ReducedFeed(feed, LiveReduced(cfg, list(feed.outputs().values())))
    try:
        sock = open_view_socket(args.host, args.port)
    except ViewPortError as exc:
        feed.close()
        print(f"shmpipe view: {exc}", file=sys.stderr)
        return 2
    print(f"view of {feed.run_name!r}: http://{args.host}:{args.port}/", file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        serve(feed, sock, settings)
    except KeyboardInterrupt:
        pass
    return 0
