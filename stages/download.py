"""download stage: fetch flower_photos (or a local archive/folder), prove it whole, extract class folders."""

from pathlib import Path

from flowerpipe.params import Params
from flowerpipe.pipeline import stage

STAGE = stage.Spec(
    order=10,
    params=["data.url", "data.sha256", "data.retries", "data.timeout_s", "data.stall_s", "data.max_extract_mb",
            "data.max_files"],
    outs=["${paths.raw}", {stage.record("download"): stage.NO_CACHE}])

CACHE = "data/.cache"


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.data.download import Caps, Limits, extract, fetch, local_path
    from flowerpipe.pipeline.outputs import check_outputs

    d = p.data
    source_path = local_path(d.url)
    out = check_outputs({"paths.raw": p.paths.raw, "paths.reports": Path(p.paths.reports) / "download.json",
                         "download cache": CACHE},
                        {"data.url": source_path or ""})
    limits = Limits(retries=d.retries, timeout_s=d.timeout_s, stall_s=d.stall_s)
    caps = Caps(max_bytes=d.max_extract_mb << 20, max_files=d.max_files)
    source = fetch(d.url, Path(CACHE), d.expected_sha256(), limits=limits, caps=caps)
    report = extract(source, out["paths.raw"], caps)
    for r in report.refused:
        print(f"refused {r['path']}: {r['reason']}")
    stage.write_json(Path(p.paths.reports) / "download.json", {
        "url": d.url, "kind": source.kind, "sha256": source.sha256, "bytes": source.size,
        "verified": bool(d.expected_sha256()), "classes": report.classes, "refused": report.refused,
        "hidden_ignored": report.hidden,
    })
    print(f"{source.kind} {source.path} sha256={source.sha256}: {len(report.classes)} classes -> {p.paths.raw}"
          + (f"; refused {len(report.refused)}" if report.refused else "")
          + (f"; ignored {report.hidden} hidden" if report.hidden else ""))


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
