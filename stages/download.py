"""download stage: fetch flower_photos (or a local archive/folder), verify, extract class folders."""

from pathlib import Path

from flowerpipe import stage
from flowerpipe.params import Params


def main(p: Params) -> None:
    """Read params, do the work, write the outputs dvc.yaml declares."""
    from flowerpipe.data.download import extract, fetch

    source = fetch(p.data.url, Path("data/.cache"), p.data.expected_sha256(), p.data.retries)
    report = extract(source, Path(p.paths.raw))
    for r in report.refused:
        print(f"refused {r['path']}: {r['reason']}")
    stage.write_json(Path(p.paths.reports) / "download.json", {
        "url": p.data.url, "kind": source.kind, "sha256": source.sha256, "bytes": source.size,
        "verified": bool(p.data.expected_sha256()), "classes": report.classes, "refused": report.refused,
    })
    print(f"{source.kind} {source.path} sha256={source.sha256}: {len(report.classes)} classes -> {p.paths.raw}")


if __name__ == "__main__":
    stage.run(main, tensorflow=False)
