"""cifarapp: train, evaluate and use a CIFAR-10 classifier in the browser (also the Space entry point).

    python app.py [--data PATH|synthetic] [--runs-dir runs] [--max-trainers 1] [--port 7860] ...

`python app.py --help` lists every option. On a Hugging Face Space (SPACE_ID set) the defaults
are those of a shared public app: abandoned runs are stopped, and runs, uploads and run
lengths are limited per caller.
"""

from __future__ import annotations

import argparse
import logging
import os

# Training and up to a dozen request threads share this process's cores. OpenMP's default
# spin-waiting makes idle torch threads burn the cores others need (10-20x slower predictions
# during training on 2 cores); passive waiting must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cifarapp.limits import Limits  # noqa: E402
from cifarapp.manager import RunRules  # noqa: E402
from cifarapp.sources import DataSource, add_data_options  # noqa: E402
from cifarapp.ui import AppContext, build_app, launch  # noqa: E402

ON_SPACE = bool(os.environ.get("SPACE_ID"))


def parse_args(argv=None) -> argparse.Namespace:
    shared = " (default: %(default)s; on a Space this is a shared app's default, elsewhere none)"
    parser = argparse.ArgumentParser(description="cifarapp web app")
    add_data_options(parser)
    parser.add_argument("--runs-dir", default="runs", help="where run folders are written")
    parser.add_argument("--max-trainers", type=int, default=int(os.environ.get("CIFARAPP_MAX_TRAINERS", 1)),
                        help="runs that may train at once in this process")
    parser.add_argument("--abandon-after", type=float, default=600.0 if ON_SPACE else None, metavar="SECONDS",
                        help="stop a run whose owner's page has not polled it for this long" + shared)
    parser.add_argument("--max-run-minutes", type=float, default=60.0 if ON_SPACE else None,
                        help="stop a run (keeping its checkpoint) after this long" + shared)
    parser.add_argument("--max-runs-per-hour", type=int, default=10 if ON_SPACE else None,
                        help="runs one owner (and one network address) may start per hour" + shared)
    parser.add_argument("--max-uploads-per-minute", type=int, default=60 if ON_SPACE else None,
                        help="uploads one network address may send per minute" + shared)
    parser.add_argument("--max-polls-per-second", type=int, default=5,
                        help="Train-tab polls one session may send per second (the page sends one)")
    parser.add_argument("--cache-max-age", type=int, default=3600,
                        help="seconds after which uploads and generated downloads are deleted")
    parser.add_argument("--isolate-runs", action=argparse.BooleanOptionalAction, default=ON_SPACE,
                        help="train every run in processes of its own (runs with several processes always do): a "
                             "crash or an out-of-memory kill then ends only that run, for a few seconds more at "
                             "its start" + shared)
    parser.add_argument("--gpu-chunk-seconds", type=float, default=None,
                        help="train runs as chains of GPU calls of this many seconds (the default on a ZeroGPU Space: "
                             "60, or $CIFARAPP_GPU_CHUNK_S)")
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits.create(args.max_runs_per_hour, args.max_uploads_per_minute, args.max_polls_per_second)
    ctx = AppContext.create(args.runs_dir, DataSource.from_args(args),
                            max_active=args.max_trainers,
                            rules=RunRules(args.abandon_after,
                                           args.max_run_minutes * 60 if args.max_run_minutes else None),
                            limits=limits, cache_max_age_s=args.cache_max_age, isolate_runs=args.isolate_runs,
                            gpu_chunk_s=args.gpu_chunk_seconds)
    launch(build_app(ctx), ctx, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
