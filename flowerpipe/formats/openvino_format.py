"""OpenVINO IR in float32, bfloat16 (where the CPU has it) and NNCF int8 (calibrated on training images)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from flowerpipe.formats.base import ConvertContext, Format, FormatError, Runner, Skipped, require
from flowerpipe.params import PosInt, Section
from flowerpipe.pipeline.outputs import atomic

VARIANTS = ("float32", "bfloat16", "int8")


class Settings(Section):
    """params.yaml `openvino`: which IR precisions to build."""

    variants: list[Literal["float32", "bfloat16", "int8"]] = list(VARIANTS)
    calibration_images: PosInt = 300  # NNCF calibration images from the training split
# What each variant asks OpenVINO's CPU plugin to compute in (INFERENCE_PRECISION_HINT): for int8, the
# layers NNCF left unquantized.
PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}


def bf16_missing() -> str:
    """Why OpenVINO cannot compute in bfloat16 on this CPU ('' when it can): it lists BF16 among its capabilities."""
    import openvino as ov

    from flowerpipe.measure.cpu import bf16_missing as cpu_reason

    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return ""
    return (f"{cpu_reason() or 'OpenVINO finds no bfloat16 support on this CPU'}; OpenVINO's CPU plugin offers "
            f"{', '.join(capabilities)} only")


def filename(variant: str) -> str:
    """<variant>/model.xml (the .bin sits beside it)."""
    return f"{variant}/model.xml"


def convert(ctx: ConvertContext, variant: str, out: Path) -> Path:
    """Convert the SavedModel to IR; int8 runs NNCF post-training quantization on the calibration images."""
    import openvino as ov

    if variant == "bfloat16" and (reason := bf16_missing()):
        raise Skipped(reason)
    model = ov.convert_model(str(ctx.savedmodel_path))
    if variant == "int8":
        import nncf

        calib = ctx.calibration
        dataset = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))])
        model = nncf.quantize(model, dataset, subset_size=len(calib), preset=nncf.QuantizationPreset.MIXED)
    elif variant not in PRECISION_HINTS:  # float32 and bfloat16 share the float32 IR
        raise ValueError(f"openvino.variants: unknown variant {variant!r}; expected one of {VARIANTS}")
    with atomic(out.parent) as tmp:
        tmp.mkdir()
        ov.save_model(model, str(tmp / out.name), compress_to_fp16=False)
    return out


def device_name(device: str) -> str:
    """The OpenVINO device for cpu/gpu, or Skipped when OpenVINO sees no such device."""
    import openvino as ov

    if device == "cpu":
        return "CPU"
    if not any(d.startswith("GPU") for d in ov.Core().available_devices):
        raise Skipped("OpenVINO sees no GPU it supports here (it runs on Intel GPUs, not NVIDIA)")
    return "GPU"


class OpenVINORunner(Runner):
    """A compiled OpenVINO model with the LATENCY hint, in its variant's precision (no silent bf16 on AMX CPUs).

    The bfloat16 variant is the float32 IR compiled with the bf16 hint. OpenVINO quietly computes in f32
    where the CPU has no bfloat16, so the runner checks what it got and refuses to pass f32 off as bf16.
    """

    def __init__(self, path: Path, variant: str, device: str = "cpu", threads: int = 0):
        import openvino as ov

        require(path)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1}
        hint = PRECISION_HINTS.get(variant)
        if device == "cpu" and hint:
            config["INFERENCE_PRECISION_HINT"] = hint
        try:
            self.compiled = ov.Core().compile_model(str(path), device_name(device), config)
        except Skipped:
            raise
        except Exception as exc:
            raise FormatError(f"{path}: not a valid OpenVINO IR ({str(exc).splitlines()[0][:200]})") from None
        if hint == "bf16" and device == "cpu":
            got = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # an ov.Type: "bf16"
            if got != "bf16":
                raise Skipped(f"OpenVINO would compute this bfloat16 model in {got} here: {bf16_missing()}")
        self.request = self.compiled.create_infer_request()
        self.output = next((o for o in self.compiled.outputs if "probabilities" in o.get_names()),
                           self.compiled.outputs[0])
        self.device = device
        side = self.compiled.inputs[0].get_partial_shape()[1]
        self.image_size = side.get_length() if side.is_static else 0

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities from one synchronous inference."""
        result = self.request.infer([images.astype(np.float32, copy=False)])
        return np.asarray(result[self.output])


DEVICES = {"cpu": "", "gpu": ""}  # device -> "" (may run there) or why it never can


def load(path: Path, option: str = "float32", device: str = "cpu", threads: int = 0) -> Runner:
    """Load an OpenVINO IR .xml."""
    return OpenVINORunner(path, option, device, threads)


FORMAT = Format(
    family="openvino", options=VARIANTS,
    path=lambda p, option: Path(p.paths.converted) / "openvino" / filename(option),
    precision={"float32": "float32", "bfloat16": "bfloat16", "int8": "int8"}, devices=DEVICES, platform="openvino_ir",
    suffixes=(".xml",), order=4, serve_rank=0, stage="convert_openvino", outs=("${paths.converted}/openvino",),
    section="openvino", settings=Settings, wanted=lambda p: list(FORMAT.settings_of(p).variants),
    wanted_params=("openvino.variants",),
    option_of=lambda path: path.parent.name if path.parent.name in VARIANTS else "float32",
    fallback={"bfloat16": "float32"},
)  # the bfloat16 folder holds the float32 IR
