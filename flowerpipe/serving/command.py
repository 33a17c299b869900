"""`flowerpipe serve`'s arguments and run, also started alone as `python -m flowerpipe.serving.command`.

serve_check starts the server this way, so that its code deps are the server's code, not every subcommand's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowerpipe.argtypes import number
from flowerpipe.errors import UserError, exit_code

HELP = "TF Serving and KServe V2 server, REST and gRPC (127.0.0.1 unless --host)"


def add_arguments(sv: argparse.ArgumentParser) -> None:
    """The serve subcommand's arguments (the params file is the caller's --params)."""
    sv.add_argument("model", nargs="?", help="a models/ folder, a base of numbered version folders, or one model "
                                             "(default: the pipeline's, from --params; else ./models)")
    sv.add_argument("--name", help="model name in URLs (default: model.name, or the base folder's name)")
    sv.add_argument("--label", action="append", default=[], help="version label NAME=VERSION (repeatable)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=number(int, 0, 65535), help="port (default: serve.port; 0: any free port)")
    sv.add_argument("--grpc-port", type=number(int, -1, 65535),
                    help="gRPC port (default: serve.grpc_port; 0: any free port; -1: no gRPC)")
    sv.add_argument("--format", help="model format to serve (default: serve.format)")
    sv.set_defaults(fn=run)


def _labels(pairs: list[str]) -> dict[str, int]:
    from flowerpipe.serving.repository import version_number

    out = {}
    for pair in pairs:
        label, _, version = pair.partition("=")
        if not label or (number := version_number(version)) is None:
            raise UserError(f"--label {pair!r}: expected NAME=VERSION, e.g. stable=1")
        out[label] = number
    return out


def run(args: argparse.Namespace) -> int:
    """Serve what the arguments name until SIGINT/SIGTERM."""
    from flowerpipe.params import Serve
    from flowerpipe.params import load as load_params
    from flowerpipe.serving.main import plan_from_params, plan_from_path, serve

    has_params = Path(args.params).exists()
    p = load_params(args.params) if has_params else None
    if args.model or not has_params:
        plan = plan_from_path(Path(args.model or "models"), args.format, args.name)
    else:
        plan = plan_from_params(p, args.format)
        plan.name = args.name or plan.name
    serve(plan, p.serve if p else Serve(), args.host, args.port, _labels(args.label), args.grpc_port)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m flowerpipe.serving.command [--params F] [serve's arguments]`."""
    parser = argparse.ArgumentParser(prog="python -m flowerpipe.serving.command", description=HELP)
    parser.add_argument("--params", help="params file (default: params.yaml, or the defaults where there is none)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.params is not None and not Path(args.params).is_file():
        parser.error(f"--params {args.params}: no such file")
    args.params = args.params or "params.yaml"
    from flowerpipe.quiet import quiet_tensorflow

    quiet_tensorflow(preload=False)  # as `flowerpipe serve`: TensorFlow only for a format that needs it, quietly
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
