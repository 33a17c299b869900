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


def hide_gpus_from_tensorflow() -> None:
    """Before TensorFlow's first op in a process that needs it only on the CPU: it sees no GPU, so it takes none of
    the GPU's memory from TensorRT, ONNX Runtime or another process."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow started in this process already (a test): the setting made then stands
        pass


def tensorflow_gpu_missing() -> str:
    """Why TensorFlow cannot put work on a GPU here ('' when it can); every GPU it lists gets memory growth.

    Memory growth first, in every process that runs TensorFlow: without it TensorFlow takes nearly all of a GPU's
    memory at its first op, leaving none to ONNX Runtime, TensorRT or another process (the benchmark's workers).
    """
    import tensorflow as tf

    if not tf.test.is_built_with_cuda():
        return "this TensorFlow was built without CUDA (install the gpu profile: make run GPU=1)"
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU is initialized already: its setting was made earlier in this process
            pass
    if not gpus:
        return ("TensorFlow lists no GPU: its CUDA libraries did not load or the driver is too old (it says why "
                "on stderr at import)")
    return ""
