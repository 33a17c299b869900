"""serve_check stage: run the REST server on a free loopback port, check its answers, load it, stop it."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    import numpy as np

    from flowerpipe import headline
    from flowerpipe.data.tfrecord import arrays
    from flowerpipe.exclusive import timing_lock
    from flowerpipe.formats.registry import FLOAT_FORMATS, built, find, load
    from flowerpipe.loadtest import check_answers, free_port, params_path, running_server
    from flowerpipe.loadtest import load as load_test
    from flowerpipe.serve import pick_format

    bench = stage.read_json(Path(p.paths.reports) / "benchmark.json", {}) or {}
    fmt = pick_format(p.serve.format, bench, built(p, FLOAT_FORMATS))
    images, _ = arrays(p.paths.tfrecords, "test", p.model.image_size, limit=16)
    images = np.rint(images).astype(np.float32)  # what a PNG round trip keeps exactly
    expected = load(find(p, fmt), "cpu", p.serve.threads).predict(images)
    with running_server(params_path(), fmt, free_port()) as url:
        answers = check_answers(url, p.model.name, images, expected)
        with timing_lock("serve_check"):
            levels = {f"c{c}": load_test(url, p.model.name, images, expected, c, p.serve.requests)
                      for c in p.serve.concurrency}
    for form, a in answers.items():
        print(f"{form:8s} top-1 agreement {a['top1_agreement']:.3f}  max|dp| {a['max_prob_diff']:.2e}")
    for level, r in levels.items():
        print(f"{level}: {r['requests']} requests, {r['errors']} errors, {r['mismatches']} mismatches, "
              f"p50 {r['latency_ms_p50']:.1f} ms, p99 {r['latency_ms_p99']:.1f} ms, {r['throughput_rps']:.1f} req/s")
    stage.write_json(Path(p.paths.reports) / "serve.json", {"format": fmt, "images": int(len(images)),
                                                            "answers": answers, "load": levels})
    stage.write_json(Path(p.paths.metrics) / "serve.json", headline.serve(levels))
    bad = [lv for lv, r in levels.items() if r["errors"] or r["mismatches"]]
    if bad or any(a["top1_agreement"] < 1.0 for a in answers.values()):
        raise stage.StageError(f"the server's answers differ from local inference ({bad or 'check'})")


if __name__ == "__main__":
    stage.run(main)
