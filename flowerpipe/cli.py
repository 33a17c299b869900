"""The `flowerpipe` command: predict, serve, client, info, recommend, check, doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flowerpipe.argtypes import number
from flowerpipe.errors import UserError, exit_code
from flowerpipe.quiet import quiet_tensorflow
from flowerpipe.serving import command


def _predict(args: argparse.Namespace) -> int:
    from flowerpipe.predict import list_images, predict_files

    if args.model:  # a model file or folder alone: its labels travel with it
        from flowerpipe.serving.artifacts import load_artifact

        loaded = load_artifact(args.model)
        model, classes, size = loaded, loaded.classes, loaded.image_size
        top_k = args.top_k or 3
    else:
        from flowerpipe.data.tfrecord import Manifest
        from flowerpipe.formats.registry import find_built, load
        from flowerpipe.params import load as load_params

        p = load_params(args.params)
        runner = load(find_built(p, args.format or p.infer.format), "cpu")
        model, classes, size = runner, Manifest.read(p.paths.tfrecords).classes, p.model.image_size
        top_k = args.top_k or p.infer.top_k
    table, _ = predict_files(model, list_images(args.paths), classes, size, top_k)  # (skipped files: logged)
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
        record = status.get(v.name, {})
        state = record.get("status") or ("ok" if v.path.exists() else "not built")
        why = f" ({record['reason']})" if state != "ok" and record.get("reason") else ""
        print(f"{v.name:20s} {state:10s} {v.path}{why}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from flowerpipe.formats.registry import check
    from flowerpipe.params import ParamsError
    from flowerpipe.params import load as load_params
    from flowerpipe.pipeline.guard import sections

    p = load_params(args.params)
    check(p)
    dvc_yaml = Path(args.params).resolve().parent / "dvc.yaml"
    if dvc_yaml.exists() and (unknown := sorted(set(p.model_extra or {}) - sections(dvc_yaml))):
        raise ParamsError("\n".join(f"{args.params}: {key}: unknown key (no stage reads it)" for key in unknown))
    print(f"{args.params}: every section and format name is valid")
    return 0


def _client(args: argparse.Namespace) -> int:
    from flowerpipe.predict import list_images
    from flowerpipe.serving.client import client_predict, server_classes

    files = list_images(args.paths)
    if not files:
        raise UserError(f"no image files in {', '.join(args.paths)}")
    if args.grpc:
        from flowerpipe.serving.grpc_client import grpc_predict

        answers = grpc_predict(args.grpc, args.model, files, timeout=args.timeout, protocol=args.protocol)
    else:
        answers = client_predict(args.url, args.model, files, timeout=args.timeout, protocol=args.protocol)
    width = len(answers[0]["probabilities"])  # (the client checked: one row of equal length per image)
    classes = (args.classes.split(",") if args.classes
               else None if args.grpc else server_classes(args.url, args.model, args.protocol, args.timeout))
    if classes and len(classes) != width:
        if args.classes:
            raise UserError(f"--classes names {len(classes)} classes, but the server answers {width} "
                            "probabilities per image")
        classes = None  # the server's metadata disagrees with its answers: indexes, as without names
    for f, pred in zip(files, answers, strict=True):
        probs = pred["probabilities"]
        order = sorted(range(width), key=lambda i: -probs[i])[: args.top_k]
        tops = ", ".join(f"{classes[i] if classes else i}={probs[i]:.3f}" for i in order)
        print(f"{f}: {pred['class_name'] or (classes[order[0]] if classes else order[0])} ({tops})")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    import json

    from flowerpipe.decide.recommend import decide_for
    from flowerpipe.params import load as load_params

    decision = decide_for(load_params(args.params))
    if args.json:
        print(json.dumps(decision, indent=1))
    else:
        from flowerpipe.decide.recommend import render

        print(render(decision))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json

    from flowerpipe.measure import doctor

    report = doctor.report()
    print(json.dumps(report, indent=1) if args.json else doctor.render(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the flowerpipe console script."""
    parser = argparse.ArgumentParser(prog="flowerpipe", description=__doc__)
    parser.add_argument("--params", help="params file (default: params.yaml, or the defaults where there is none)")
    sub = parser.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("predict", help="top-k classes for image files or folders")
    pr.add_argument("paths", nargs="+")
    pr.add_argument("--format", help="model format, e.g. keras, onnx, tflite-int8, openvino-float32")
    pr.add_argument("--model", help="a model file or folder to use alone (its labels.txt beside it), not params")
    pr.add_argument("--top-k", type=number(int, 0), default=0, help="classes per image (default: infer.top_k)")
    pr.add_argument("--csv", help="also write the table to this CSV file")
    pr.set_defaults(fn=_predict)
    command.add_arguments(sub.add_parser("serve", help=command.HELP))
    cl = sub.add_parser("client", help="send images to a TF Serving-compatible server, print top-k")
    cl.add_argument("paths", nargs="+", help="image files or folders")
    cl.add_argument("--url", default="http://127.0.0.1:8501", help="the server (default: %(default)s)")
    cl.add_argument("--model", default="flowers", help="model name in URLs (default: %(default)s)")
    cl.add_argument("--top-k", type=number(int, 1), default=3, help="classes per image (default: %(default)s)")
    cl.add_argument("--timeout", type=number(float, 0.001), default=60.0,
                    help="seconds to wait for the answer (default: %(default)s)")
    cl.add_argument("--classes", help="comma-separated class names (default: those the server's metadata lists, "
                                      "else indexes)")
    cl.add_argument("--protocol", choices=["tfs", "v2"], default="tfs", help="TF Serving or KServe V2")
    cl.add_argument("--grpc", metavar="HOST:PORT", nargs="?", const="127.0.0.1:8500",
                    help="over gRPC to this server instead of REST to --url (default: %(const)s)")
    cl.set_defaults(fn=_client)
    sub.add_parser("info", help="every model format, its status and path").set_defaults(fn=_info)
    rc = sub.add_parser("recommend", help="what to ship on this machine: the best format for each goal, above the "
                                          "accuracy floors, with its margin (from the evaluate and benchmark records)")
    rc.add_argument("--json", action="store_true", help="the whole decision as JSON")
    rc.set_defaults(fn=_recommend)
    sub.add_parser("check", help="validate the whole params file (make run does, before dvc repro)").set_defaults(
        fn=_check)
    dr = sub.add_parser("doctor", help="what each runtime sees on this machine and why (CPU flags, OpenVINO, the "
                                       "NVIDIA driver, TensorFlow, ONNX Runtime, TensorRT): paste it in a bug report")
    dr.add_argument("--json", action="store_true", help="the whole report as JSON")
    dr.set_defaults(fn=_doctor)
    args = parser.parse_args(argv)
    if args.params is not None and not Path(args.params).is_file():
        parser.error(f"--params {args.params}: no such file")
    args.params = args.params or "params.yaml"
    # Serving and --model import TensorFlow only for a format that needs it.
    quiet_tensorflow(preload=(args.command == "predict" and not args.model) or args.command == "doctor")
    return exit_code(lambda: args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
