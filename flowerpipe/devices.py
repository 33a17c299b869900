"""What accelerators this machine has, asked of the NVIDIA driver (no TensorFlow import needed)."""

from __future__ import annotations


def gpu_names() -> list[str]:
    """Names of the NVIDIA GPUs the driver reports; empty without a driver or GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library or no driver: no usable NVIDIA GPU
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    finally:
        pynvml.nvmlShutdown()
