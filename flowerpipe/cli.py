"""The `flowerpipe` command: predict, serve, client, info."""

from __future__ import annotations

import argparse
import sys

from flowerpipe.quiet import quiet_tensorflow


def _predict(args: argparse.Namespace) -> int:
    from flowerpipe.data.tfrecord import Manifest
    from flowerpipe.formats.registry import find, load
    from flowerpipe.infer import list_images, predict_files
    from flowerpipe.params import load as load_params

    p = load_params(args.params)
    runner = load(find(p, args.format or p.infer.format), "cpu")
    classes = Manifest.read(p.paths.tfrecords).classes
    table, skipped = predict_files(runner, list_images(args.paths), classes, p.model.image_size,
                                   args.top_k or p.infer.top_k)
    for s in skipped:
        print(f"skipped {s['path']}: {s['reason']}", file=sys.stderr)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(table.to_string(index=False) if len(table) else "no readable images")
    return 0 if len(table) else 1


def _info(args: argparse.Namespace) -> int:
    from flowerpipe.formats.registry import conversion_status, variants
    from flowerpipe.params import load as load_params

    p = load_params(args.params)
    status = conversion_status(p)
    for v in variants(p):
        state = status.get(v.name, {}).get("status") or ("ok" if v.path.exists() else "not built")
        print(f"{v.name:18s} {state:10s} {v.path}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from flowerpipe.params import load as load_params
    from flowerpipe.serve import serve

    serve(load_params(args.params), args.host, args.port, args.format)
    return 0


def _client(args: argparse.Namespace) -> int:
    from flowerpipe.infer import list_images
    from flowerpipe.serve import client_predict

    files = list_images(args.paths)
    for f, pred in zip(files, client_predict(args.url, args.model, files), strict=True):
        probs = pred["probabilities"]
        classes = args.classes.split(",") if args.classes else None
        order = sorted(range(len(probs)), key=lambda i: -probs[i])[: args.top_k]
        tops = ", ".join(f"{classes[i] if classes else i}={probs[i]:.3f}" for i in order)
        print(f"{f}: {pred.get('class_name', order[0])} ({tops})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the flowerpipe console script."""
    parser = argparse.ArgumentParser(prog="flowerpipe", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="top-k classes for image files or folders")
    pr.add_argument("paths", nargs="+")
    pr.add_argument("--format", help="model format, e.g. keras, onnx, tflite-int8, openvino-float32")
    pr.add_argument("--top-k", type=int, default=0)
    pr.add_argument("--csv", help="also write the table to this CSV file")
    pr.set_defaults(fn=_predict)
    sv = sub.add_parser("serve", help="TF Serving-compatible REST server (127.0.0.1 unless --host)")
    sv.add_argument("--host")
    sv.add_argument("--port", type=int)
    sv.add_argument("--format", help="model format to serve (default: serve.format)")
    sv.set_defaults(fn=_serve)
    cl = sub.add_parser("client", help="send images to a TF Serving-compatible server, print top-k")
    cl.add_argument("paths", nargs="+")
    cl.add_argument("--url", default="http://127.0.0.1:8501")
    cl.add_argument("--model", default="flowers")
    cl.add_argument("--top-k", type=int, default=3)
    cl.add_argument("--classes", help="comma-separated class names, for servers that return only probabilities")
    cl.set_defaults(fn=_client)
    sub.add_parser("info", help="every model format, its status and path").set_defaults(fn=_info)
    args = parser.parse_args(argv)
    quiet_tensorflow(preload=args.command not in ("info", "client"))
    from flowerpipe.formats.base import FormatError
    from flowerpipe.params import ParamsError

    try:
        return args.fn(args)
    except (ParamsError, FormatError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
