"""`flowerpipe doctor`: what each runtime sees on this machine, and why; the first step on a GPU machine.

Each check asks the library itself (never assumes): the CPU's flags, OpenVINO's CPU capabilities, the NVIDIA driver,
TensorFlow's GPUs (and, where the driver lists a GPU that TensorFlow does not, the CUDA library that failed, read
from TensorFlow's own unmuted log in a child process), ONNX Runtime's providers after `preload_dlls` and whether a
tiny CUDA session really ran on CUDA, TensorRT's version and whether a builder can be made, and the CUDA, cuDNN and
TensorRT libraries those loaded into this process.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

# CPU flags (as /proc/cpuinfo spells them) that decide which precisions run fast: vector width, bfloat16 and
# float16 arithmetic, int8 dot products, AMX tiles
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8")
# What TensorFlow logs when a CUDA library it needs does not load (its warnings, muted at TF_CPP_MIN_LOG_LEVEL 2+)
TF_GPU_ERRORS = re.compile(r"Cannot dlopen some GPU libraries|Could not load dynamic library|Could not find cuda "
                           r"drivers|cuInit|libcu\w*\.so|libcudnn\w*\.so|CUDA_ERROR\w*")
LOADED_LIBS = re.compile(r"/(lib(?:cudart|cudnn|cublas|cublasLt|curand|cufft|nvinfer|nvonnxparser)[\w.-]*\.so[\d.]*)$")


def cpu() -> dict:
    """The CPU's model, cores and the flags that matter."""
    from flowerpipe.measure.cpu import flags

    have = flags()
    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in have for f in CPU_FLAGS}}


def openvino() -> dict:
    """OpenVINO's version, its CPU plugin's capabilities, and the precisions flowerpipe builds for it here."""
    try:
        import openvino as ov
    except ImportError as exc:
        return {"status": "missing", "reason": str(exc)}
    from flowerpipe.measure.cpu import bf16_missing

    caps = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    offered = ["float32", "int8"] + ([] if bf16_missing() else ["bfloat16"])
    return {"status": "ok", "version": ov.__version__.split("-")[0], "cpu_capabilities": caps, "precisions": offered,
            **({"bfloat16": bf16_missing()} if bf16_missing() else {})}


def nvidia_driver() -> dict:
    """The NVIDIA driver's GPUs, its version and the newest CUDA it supports (empty without a driver)."""
    from flowerpipe.measure.devices import gpu_names

    names = gpu_names()
    out: dict = {"gpus": names}
    if names:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                out["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
                cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
                out["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
            finally:
                pynvml.nvmlShutdown()
        except Exception as exc:  # the names came through, the versions did not: say so, keep the rest
            out["driver_error"] = f"{exc.__class__.__name__}: {exc}"
    return out


def tensorflow(driver_gpus: list[str], run=subprocess.run) -> dict:
    """TensorFlow's version and CUDA build, the GPUs it lists, and (where it lists none of the driver's) why."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        return {"status": "missing", "reason": str(exc)}
    from flowerpipe.measure.devices import tensorflow_gpu_missing

    build = tf.sysconfig.get_build_info()
    out = {"status": "ok", "version": tf.__version__, "built_with_cuda": bool(build.get("is_cuda_build")),
           **{k: build[k] for k in ("cuda_version", "cudnn_version") if build.get(k)}}
    missing = tensorflow_gpu_missing()
    out["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    if driver_gpus and missing:
        out["gpu_reason"] = missing
        out["log"] = tensorflow_gpu_log(run)
    return out


def tensorflow_gpu_log(run=subprocess.run) -> list[str]:
    """The lines TensorFlow logs about CUDA while it looks for GPUs, in a child process with nothing muted."""
    code = "import tensorflow as tf; tf.config.list_physical_devices('GPU')"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"}
    done = run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    return [line.strip() for line in done.stderr.splitlines() if TF_GPU_ERRORS.search(line)][:12]


def onnxruntime(driver_gpus: list[str]) -> dict:
    """ONNX Runtime's version and providers after preload_dlls; on a GPU machine, a tiny session run on CUDA."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"status": "missing", "reason": str(exc)}
    from flowerpipe.formats.onnx_format import preload_cuda

    out: dict = {"status": "ok", "version": ort.__version__}
    if "CUDAExecutionProvider" in ort.get_available_providers():
        out["preload_dlls"] = preload_cuda() or "ok"
    out["providers"] = ort.get_available_providers()
    if driver_gpus and "CUDAExecutionProvider" in out["providers"]:
        out["cuda_session"] = _cuda_session(ort)
    return out


def _cuda_session(ort) -> str:
    """'ok' where a one-node model ran with CUDAExecutionProvider first, else where it ran or why it failed."""
    import numpy as np
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [value("x", TensorProto.FLOAT, [4])],
                              [value("y", TensorProto.FLOAT, [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    try:
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        session.run(None, {"x": np.array([-1, 0, 1, 2], np.float32)})
    except Exception as exc:  # the CUDA provider failed outright: its message says which library
        return f"failed: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
    ran = session.get_providers()
    return "ok" if ran[0] == "CUDAExecutionProvider" else f"fell back to {ran} (a CUDA or cuDNN library did not load)"


def tensorrt(driver_gpus: list[str]) -> dict:
    """TensorRT's version, and whether a builder can be made (it needs a GPU and its libraries)."""
    from flowerpipe.formats.tensorrt_format import import_tensorrt

    try:
        trt = import_tensorrt()
    except (ImportError, OSError) as exc:  # not installed, or its libraries do not load
        return {"status": "missing", "reason": f"{exc} (make run GPU=1 installs it)"}
    out = {"status": "ok", "version": trt.__version__}
    if driver_gpus:
        try:
            builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
            out["builder"] = "ok" if builder is not None else "TensorRT returned no builder"
        except Exception as exc:  # a library or the GPU is missing: TensorRT's own words
            out["builder"] = f"failed: {exc.__class__.__name__}: {exc}"
    return out


def loaded_libraries(maps: str = "/proc/self/maps") -> list[str]:
    """The CUDA, cuDNN, cuBLAS and TensorRT libraries mapped into this process (their versioned file names)."""
    found = set()
    for line in _read(maps).splitlines():
        if match := LOADED_LIBS.search(line.strip()):
            found.add(os.path.basename(os.path.realpath(line.split()[-1])) or match.group(1))
    return sorted(found)


def report(run=subprocess.run) -> dict:
    """Every check, in the order a GPU user reads them."""
    from flowerpipe.measure.harness import library_versions

    driver = nvidia_driver()
    out = {"cpu": cpu(), "openvino": openvino(), "nvidia": driver, "tensorflow": tensorflow(driver["gpus"], run),
           "onnxruntime": onnxruntime(driver["gpus"]), "tensorrt": tensorrt(driver["gpus"])}
    out["libraries_loaded"] = loaded_libraries()
    out["versions"] = library_versions()
    out["python"] = platform.python_version()
    return out


def render(r: dict) -> str:
    """One screen of text from report()."""
    c = r["cpu"]
    flags = " ".join(f.upper() for f, on in c["flags"].items() if on) or "none of " + ", ".join(CPU_FLAGS)
    lines = [f"CPU          {c['model']}, {c['cores']} cores; {flags}"]
    ov = r["openvino"]
    lines.append(f"OpenVINO     {ov['version']}: CPU {', '.join(ov['cpu_capabilities'])}; flowerpipe builds "
                 f"{', '.join(ov['precisions'])}" + (f" (no bfloat16: {ov['bfloat16']})" if ov.get("bfloat16") else "")
                 if ov["status"] == "ok" else f"OpenVINO     not installed: {ov['reason']}")
    nv = r["nvidia"]
    if nv["gpus"]:
        error = f" ({nv['driver_error']})" if "driver_error" in nv else ""
        lines.append(f"NVIDIA       {len(nv['gpus'])} GPU(s): {', '.join(nv['gpus'])}; driver {nv.get('driver', '?')}, "
                     f"CUDA {nv.get('cuda_driver', '?')}{error}")
    else:
        lines.append("NVIDIA       no GPU: the driver (asked through pynvml) lists none; GPU cells are skipped")
    tf = r["tensorflow"]
    if tf["status"] != "ok":
        lines.append(f"TensorFlow   not installed: {tf['reason']}")
    else:
        cuda = f", CUDA {tf['cuda_version']}, cuDNN {tf['cudnn_version']}" if tf.get("cuda_version") else ""
        lines.append(f"TensorFlow   {tf['version']} ({'CUDA build' if tf['built_with_cuda'] else 'CPU build'}{cuda}): "
                     + (f"GPUs {', '.join(tf['gpus'])}" if tf["gpus"] else "no GPU"))
        if tf.get("gpu_reason"):
            lines.append(f"             why: {tf['gpu_reason']}")
            lines += [f"             | {line}" for line in tf.get("log", [])] or [
                "             | TensorFlow logged nothing about CUDA (run with TF_CPP_MIN_LOG_LEVEL=0 to see all)"]
    o = r["onnxruntime"]
    if o["status"] != "ok":
        lines.append(f"ONNX Runtime not installed: {o['reason']}")
    else:
        lines.append(f"ONNX Runtime {o['version']}: {', '.join(o['providers'])}"
                     + (f"; preload_dlls {o['preload_dlls']}" if "preload_dlls" in o else "")
                     + (f"; CUDA session {o['cuda_session']}" if "cuda_session" in o else ""))
    t = r["tensorrt"]
    lines.append(f"TensorRT     {t['version']}" + (f"; builder {t['builder']}" if "builder" in t else "")
                 if t["status"] == "ok" else f"TensorRT     not installed: {t['reason']}")
    lines.append("Loaded       " + (", ".join(r["libraries_loaded"]) or "no CUDA, cuDNN or TensorRT library"))
    lines.append("Versions     " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + f"; Python {r['python']}")
    return "\n".join(lines)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
