"""cifarapp: train, evaluate and use a CIFAR-10 classifier in the browser (also the Space entry point).

    python app.py [--data PATH|synthetic] [--data-dir data] [--no-download] [--runs-dir runs]
                  [--max-trainers 1] [--port 7860]
"""

from __future__ import annotations

import argparse
import os

# Training and up to a dozen request threads share this process's cores. OpenMP's default
# spin-waiting makes idle torch threads burn the cores others need (10-20x slower predictions
# during training on 2 cores); passive waiting must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from cifarapp.ui import AppContext, DataSettings, build_app, launch  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="cifarapp web app")
    parser.add_argument("--data", default=os.environ.get("CIFARAPP_DATA"),
                        help="CIFAR-10 .npz or torchvision folder, or 'synthetic' (default: CIFARAPP_DATA, "
                             "else the cache in --data-dir, else download on the first Start)")
    parser.add_argument("--data-dir", default="data", help="where the download and its cache live")
    parser.add_argument("--no-download", action="store_true", help="never download CIFAR-10")
    parser.add_argument("--runs-dir", default="runs", help="where run folders are written")
    parser.add_argument("--max-trainers", type=int, default=int(os.environ.get("CIFARAPP_MAX_TRAINERS", 1)),
                        help="runs that may train at once in this process")
    parser.add_argument("--abandon-after", type=float, default=600.0,
                        help="stop a run nobody has watched for this many seconds")
    parser.add_argument("--cache-max-age", type=int, default=3600,
                        help="seconds after which uploads and generated downloads are deleted")
    parser.add_argument("--host", default=None, help="address to listen on (default: Gradio's, 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default: Gradio's, 7860)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    ctx = AppContext.create(args.runs_dir, DataSettings(args.data, args.data_dir, not args.no_download),
                            max_active=args.max_trainers, abandon_after_s=args.abandon_after,
                            cache_max_age_s=args.cache_max_age)
    launch(build_app(ctx), ctx, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
