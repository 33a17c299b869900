"""Typed, validated pipeline parameters loaded from params.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

OFFICIAL_URL = "https://storage.googleapis.com/download.tensorflow.org/example_images/flower_photos.tgz"
# Published by TensorFlow Datasets (url_checksums/tf_flowers.txt) for the official archive.
OFFICIAL_SHA256 = "4c54ace7911aaffe13a365c34f650e71dd5bf1be0a58b464e5a7183e3e595d9c"

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what numpy and Keras seed from
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ParamsError(ValueError):
    """A params.yaml problem, one line per bad key."""


class Section(BaseModel):
    """A params.yaml section: unknown keys, wrong types and impossible values are refused."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True, allow_inf_nan=False)


class Paths(Section):
    """Where stages read and write; dvc.yaml interpolates the same values."""

    raw: str = "data/raw"
    tfrecords: str = "data/tfrecords"
    model: str = "models/model.keras"
    train_dir: str = "models/train"
    features: str = "data/features"
    serving: str = "models/serving"
    converted: str = "models/converted"
    live: str = "dvclive"
    metrics: str = "metrics"
    plots: str = "plots"
    reports: str = "reports"
    ship: str = "models/ship"

    @field_validator("*")
    @classmethod
    def _local(cls, v: str) -> str:
        if "://" in v:
            raise ValueError("stages read and write local paths; TensorFlow 2.21 reads s3:// only through "
                             "tensorflow-io, which has no release for it: keep data and models in a DVC remote on "
                             "S3 and `dvc pull` them (docs/scale-out.md)")
        return v


class Data(Section):
    """Where the photos come from."""

    url: str = OFFICIAL_URL
    sha256: str = "auto"
    test_images: str = ""
    retries: NonNegInt = 5
    timeout_s: PosInt = 3600  # the whole download, retries included
    stall_s: PosInt = 60  # no byte for this long: the connection is dropped and resumed
    max_extract_mb: PosInt = 4096  # what an archive may expand to
    max_files: PosInt = 200_000

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if v in ("", "auto") or (len(v) == 64 and all(c in "0123456789abcdef" for c in v)):
            return v
        raise ValueError("expected 'auto', '' or a 64-character hex sha256")

    def expected_sha256(self) -> str:
        """The checksum to verify against ('' means only record it)."""
        if self.sha256 == "auto":
            return OFFICIAL_SHA256 if self.url == OFFICIAL_URL else ""
        return self.sha256


class Split(Section):
    """Stratified split fractions and seed."""

    val: Fraction = 0.1
    test: Fraction = 0.1
    seed: Seed = 42

    @model_validator(mode="after")
    def _sum(self) -> Split:
        if self.val + self.test >= 1.0:
            raise ValueError(f"split.val + split.test must be below 1, got {self.val} + {self.test}")
        return self


class TFRecords(Section):
    """TFRecord sharding."""

    shard_mb: PosInt = 64
    workers: NonNegInt = 0
    max_image_mb: PosInt = 50  # larger files are skipped and listed
    max_image_megapixels: PosInt = 100  # larger images (decompression bombs) are skipped and listed


# What `auto` means for model.image_size, model.width and model.middle_blocks: the published Xception at 180x180
# for pretrained weights; from scratch (weights: none), the recipe's half-width network with 4 middle blocks at
# 128x128 (README: "From scratch in 30 minutes on 2 cores").
PRETRAINED_NETWORK = {"image_size": 180, "width": 1.0, "middle_blocks": 8}
SCRATCH_NETWORK = {"image_size": 128, "width": 0.5, "middle_blocks": 4}


def from_scratch(weights: str) -> bool:
    """Whether model.weights means training from scratch."""
    return str(weights).strip().lower() in ("none", "")


class Model(Section):
    """Backbone, input size and head."""

    arch: str = "xception"
    image_size: PosInt = 180
    width: Annotated[float, Field(gt=0.0, le=4.0)] = 1.0
    middle_blocks: Annotated[int, Field(ge=1, le=32)] = 8
    weights: str = "imagenet"
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    name: str = "flowers"

    @model_validator(mode="before")
    @classmethod
    def _auto(cls, data: Any) -> Any:
        """`auto` (or a missing key) for image_size, width and middle_blocks: the network the weights call for."""
        if not isinstance(data, dict):
            return data
        scratch = from_scratch(data.get("weights", "imagenet")) and data.get("arch", "xception") == "xception"
        network = SCRATCH_NETWORK if scratch else PRETRAINED_NETWORK
        return {**data, **{k: v for k, v in network.items() if data.get(k, "auto") == "auto"}}

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        from flowerpipe.model.backbones import BACKBONES

        if v not in BACKBONES:
            raise ValueError(f"expected one of {sorted(BACKBONES)}")
        return v

    @model_validator(mode="after")
    def _size(self) -> Model:
        from flowerpipe.model.backbones import BACKBONES
        from flowerpipe.model.xception import is_standard

        minimum = BACKBONES[self.arch].min_size
        if self.image_size < minimum:
            raise ValueError(f"model.image_size must be at least {minimum} for {self.arch}, got {self.image_size}")
        if not is_standard(self.width, self.middle_blocks):
            if self.arch != "xception":
                raise ValueError(f"model.width and model.middle_blocks scale xception only; {self.arch} takes "
                                 "width 1.0 and middle_blocks 8")
            if self.weights == "imagenet":
                raise ValueError("model.weights: ImageNet weights exist only for the standard Xception (width 1.0, "
                                 f"middle_blocks 8), not width {self.width:g} with {self.middle_blocks} middle blocks;"
                                 " use none or a weights file saved at the same size")
        return self


class Train(Section):
    """Training schedule, distribution and reproducibility."""

    batch_size: PosInt = 32
    epochs: NonNegInt = 6
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    fine_tune_epochs: NonNegInt = 6
    fine_tune_layers: NonNegInt = 40
    fine_tune_learning_rate: Annotated[float, Field(gt=0)] = 1e-5
    scratch_epochs: PosInt = 300
    scratch_learning_rate: Annotated[float, Field(gt=0)] = 2e-3
    scratch_bn_momentum: Annotated[float, Field(gt=0, lt=1)] = 0.9
    scratch_schedule: Literal["cosine", "constant"] = "cosine"
    scratch_warmup_epochs: NonNegInt = 2
    scratch_weight_decay: Annotated[float, Field(ge=0, lt=1)] = 0.05
    scratch_minutes: Annotated[float, Field(ge=0)] = 30.0
    scratch_patience: NonNegInt = 0
    scratch_crop_area: Annotated[float, Field(gt=0, le=1)] = 0.25
    scratch_crop_max_upsample: Annotated[float, Field(ge=1, le=8)] = 1.5
    scratch_mixup: Annotated[float, Field(ge=0, le=10)] = 0.0
    scratch_cutmix: Annotated[float, Field(ge=0, le=10)] = 0.0
    scratch_randaugment: Annotated[float, Field(ge=0, le=1)] = 0.0
    scratch_ema: Annotated[float, Field(ge=0, lt=1)] = 0.0
    scratch_progressive: Annotated[float, Field(ge=0.25, le=1)] = 0.75
    deterministic: bool = True
    augment: bool = True
    augment_strength: Annotated[float, Field(gt=0, le=4)] = 1.0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    patience: NonNegInt = 5
    cache_features: bool = True
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "ray"] = "auto"
    ray_workers: PosInt = 2  # train.strategy ray: how many workers Ray Train starts
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto"
    seed: Seed = 42
    max_steps_per_epoch: NonNegInt = 0


class Export(Section):
    """SavedModel version for TF Serving's models/<name>/<version>/ layout."""

    version: PosInt = 1


class Evaluate(Section):
    """Scoring of every format on the test split."""

    batch_size: PosInt = 32


class Benchmark(Section):
    """Timing matrix."""

    runtimes: Literal["all"] | Annotated[list[str], Field(min_length=1)] = "all"  # all: every variant asked for
    devices: Annotated[list[Literal["cpu", "gpu"]], Field(min_length=1)] = ["cpu", "gpu"]
    batch_sizes: Annotated[list[PosInt], Field(min_length=1)] = [1, 8, 32]
    rounds: PosInt = 3
    warmup: NonNegInt = 3
    iterations: PosInt = 20
    min_seconds: Annotated[float, Field(ge=0)] = 2.0
    max_seconds: Annotated[float, Field(gt=0)] = 30.0
    threads: NonNegInt = 0
    inter_op_threads: NonNegInt = 1


class Infer(Section):
    """Predictions for a folder of the user's images."""

    format: str = "keras"
    top_k: PosInt = 3


class Serve(Section):
    """REST and gRPC server settings and the serve_check load test."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8501
    grpc_port: Annotated[int, Field(ge=-1, le=65535)] = 8500  # -1: no gRPC
    device: Literal["auto", "cpu", "gpu"] = "auto"
    format: str = "auto"
    min_agreement: Annotated[float, Field(ge=0, le=1)] = 0.995
    max_body_mb: PosInt = 32
    max_batch: PosInt = 64
    batch_window_ms: Annotated[float, Field(ge=0)] = 0.0
    timeout_s: Annotated[float, Field(gt=0)] = 30.0
    max_inflight: PosInt = 256
    decode_workers: NonNegInt = 0
    keep_versions: PosInt = 2
    poll_s: Annotated[float, Field(ge=0)] = 2.0
    version_labels: dict[str, NonNegInt] = {}
    concurrency: Annotated[list[PosInt], Field(min_length=1)] = [1, 8]
    requests: PosInt = 80
    tune_max_batch: list[PosInt] = [8, 64]  # serve_check: settings tried for the served format ([] = none)
    tune_batch_window_ms: list[Annotated[float, Field(ge=0)]] = [0.0, 5.0]
    threads: NonNegInt = 0

    @field_validator("version_labels")
    @classmethod
    def _labels(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [k for k in v if not k or "/" in k or ":" in k or k.isdigit()]
        if bad:
            raise ValueError(f"labels {bad} must be non-numeric names without '/' or ':' (e.g. stable, canary)")
        return v


class Deploy(Section):
    """What `flowerpipe recommend`, the report and serve.format auto may ship (with serve.min_agreement)."""

    min_accuracy_ratio: Annotated[float, Field(gt=0, le=1)] = 0.99  # of the trained model's test accuracy
    latency_budget_ms: Annotated[float, Field(gt=0)] = 100.0  # the p99 a batch may take for the budget goal


class Ship(Section):
    """Where the shipped model repository is uploaded and which image serves it (the KServe manifests' values)."""

    storage_uri: str = "s3://BUCKET/flowerpipe"  # the folder the repository's content is uploaded to
    image: str = "flowerpipe-serve:latest"  # deploy/Dockerfile.serve, as pushed to the cluster's registry
    max_replicas: PosInt = 4


class Headline(Section):
    """Which formats get their own numbers in the headline metrics that dvc exp show compares."""

    formats: list[str] = ["savedmodel", "tflite-int8", "openvino-int8"]

    @field_validator("formats")
    @classmethod
    def _few(cls, v: list[str]) -> list[str]:
        if len(v) > 4:  # the names themselves are checked against the formats by registry.check
            raise ValueError("at most 4 formats, so that dvc exp show fits a terminal")
        return v


class Params(Section):
    """Every knob of the pipeline; a format's own section is kept as given and validated by section()."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    paths: Paths = Paths()
    data: Data = Data()
    split: Split = Split()
    tfrecords: TFRecords = TFRecords()
    model: Model = Model()
    train: Train = Train()
    export: Export = Export()
    evaluate: Evaluate = Evaluate()
    benchmark: Benchmark = Benchmark()
    infer: Infer = Infer()
    serve: Serve = Serve()
    deploy: Deploy = Deploy()
    ship: Ship = Ship()
    headline: Headline = Headline()

    @model_validator(mode="after")
    def _sections(self) -> Params:
        bad = [k for k, v in (self.model_extra or {}).items() if not isinstance(v, dict)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: unknown key (a format's section is a mapping of keys)")
        return self

    def section(self, name: str, cls: type[BaseModel]) -> Any:
        """A format's section, validated by its own model (its defaults where params.yaml has none)."""
        return parse_section(cls, (self.model_extra or {}).get(name) or {}, name)


def _describe(err: dict[str, Any]) -> str:
    """One line for one pydantic error: key, what was expected, what was given."""
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    return f"{key}: {msg} (got {err.get('input')!r})"


def parse_section(cls: type[BaseModel], raw: dict[str, Any], name: str, source: str = "params.yaml") -> Any:
    """Validate one format's section; raise ParamsError naming every bad key under it."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {name}.{_describe(e)}" for e in exc.errors(include_url=False)]
        raise ParamsError("\n".join(lines)) from None


RENAMED = {"trt": "tensorrt"}  # a section's old name -> its name now: one line for a params.yaml from before


def parse(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming every bad key."""
    if old := [key for key in raw or {} if key in RENAMED]:
        raise ParamsError("\n".join(f"{source}: {key}: renamed {RENAMED[key]} (rename the section)" for key in old))
    try:
        return Params.model_validate(raw or {})
    except ValidationError as exc:
        lines = [f"{source}: {_describe(e)}" for e in exc.errors(include_url=False)]
        raise ParamsError("\n".join(lines)) from None


def load(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: not valid YAML{where}: {what}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse(raw, str(path))
