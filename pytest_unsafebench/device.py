"""The device torch classifiers run on (``--unsafebench-device``), resolved the same way by the
run and by each Ray actor."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path


def resolve_device(device: str) -> str:
    """``auto``: CUDA when torch sees a GPU. On a machine without an NVIDIA driver this answers
    "cpu" without importing torch (a second of start-up that ONNX classifiers never need)."""
    if device != "auto":
        return device
    if "torch" not in sys.modules:
        no_driver = (not Path("/proc/driver/nvidia/version").exists()
                     and not shutil.which("nvidia-smi"))
        if no_driver or importlib.util.find_spec("torch") is None:
            return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
