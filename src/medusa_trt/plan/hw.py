"""What this machine has: NVIDIA GPUs (NVML, else nvidia-smi), CPU cores, RAM. Never raises."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from medusa_trt import engine_facts

if TYPE_CHECKING:
    from medusa_trt.config.profile import HardwareProfile

_GIB = 1024**3
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_gib: float


def _from_nvml() -> list[Gpu] | None:
    try:
        import pynvml
    except Exception as e:
        logger.debug("NVML unavailable (%s): asking nvidia-smi", e)
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:
        logger.debug("NVML did not start (%s): asking nvidia-smi", e)
        return None
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(i, name, pynvml.nvmlDeviceGetMemoryInfo(h).total / _GIB))
        return gpus
    except Exception as e:
        logger.debug("NVML query failed (%s): asking nvidia-smi", e)
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader`` (``NVIDIA H200, 143771 MiB``)."""
    gpus: list[Gpu] = []
    for line in text.splitlines():
        name, sep, mem = line.rpartition(",")
        if not sep or not name.strip():
            continue
        parts = mem.split()
        try:
            value = float(parts[0])
        except (IndexError, ValueError):
            continue
        unit = parts[1].lower() if len(parts) > 1 else "mib"
        gib = value if unit == "gib" else value / 1024  # nvidia-smi reports MiB
        gpus.append(Gpu(len(gpus), name.strip(), gib))
    return gpus


def _from_nvidia_smi() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("nvidia-smi failed: %s", e)
        return []
    if out.returncode != 0:
        logger.debug("nvidia-smi exited %d: %s", out.returncode, out.stderr.strip()[:200])
        return []
    return parse_nvidia_smi(out.stdout)


@lru_cache(maxsize=1)
def detect_gpus() -> tuple[Gpu, ...]:
    """The NVIDIA GPUs visible here (empty on a CPU machine or when the driver does not answer)."""
    gpus = _from_nvml()
    found = tuple(gpus if gpus is not None else _from_nvidia_smi())
    logger.debug("GPUs: %s", ", ".join(f"{g.index}: {g.name} {g.memory_gib:.0f} GiB" for g in found) or "none")
    return found


def host_memory_gib() -> float:
    try:
        import psutil

        return float(psutil.virtual_memory().total) / _GIB
    except Exception:
        return 0.0


def cpu_count() -> int:
    return os.cpu_count() or 1


def can_run(
    profile: HardwareProfile, gpus: tuple[Gpu, ...] | list[Gpu] | None = None, ram_gib: float | None = None
) -> tuple[bool, str]:
    """Whether this machine has what ``profile`` needs, and why not."""
    hw, facts = profile.hardware, engine_facts.get(profile.engine)
    if hw.device == "cpu":
        ram = host_memory_gib() if ram_gib is None else ram_gib
        need = hw.memory_gib * hw.count
        if ram and ram < need:
            return False, f"needs {need:g} GiB RAM, this machine has {ram:.1f} GiB"
        if facts.toolkit is not None:
            return _toolkit_found(facts.title, facts.toolkit, "CPU")
        return True, f"{facts.title} on CPU ({hw.count} rank{'s' if hw.count > 1 else ''})"
    found = list(detect_gpus() if gpus is None else gpus)
    want = f"{hw.count}x {hw.gpu} ({hw.memory_gib:g} GiB)"
    if not found:
        return False, f"needs {want}; no NVIDIA GPU found (nvidia-smi/NVML)"
    match = [g for g in found if (hw.gpu or "").lower() in g.name.lower() and g.memory_gib >= 0.97 * hw.memory_gib]
    if len(match) < hw.count:
        have = ", ".join(sorted({g.name for g in found}))
        return False, f"needs {want}; found {len(match)} matching of {len(found)} ({have})"
    if facts.toolkit is not None:
        return _toolkit_found(facts.title, facts.toolkit, f"{len(match)}x {match[0].name}")
    return True, f"{len(match)}x {match[0].name} found"


def _toolkit_found(title: str, kit: engine_facts.Toolkit, where: str) -> tuple[bool, str]:
    """Whether the engine's toolkit is installed here (or in the interpreter its variable names), not imported."""
    found, what = kit.interpreter(), f"{title} on {where}"
    if found is None:
        return False, f"{what}: {title} is not installed ({kit.install_hint()})"
    return True, f"{what} ({found})"
