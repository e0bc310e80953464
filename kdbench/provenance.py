"""What a result was computed with: the versions of the code and libraries, and the CPU."""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_model() -> str:
    """The CPU's name: ``/proc/cpuinfo``'s "model name", else the platform's processor, else
    its machine type ("" if none is known)."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | int | None]:
    """kdbench, python, torch and timm versions, torch's CPU thread count (CPU results depend
    on it: the order of float reductions), the CPU model and the CUDA version (None: none)."""
    import timm
    import torch

    import kdbench

    return {"kdbench": kdbench.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_model": cpu_model(),
            "cuda": torch.version.cuda}
