"""The environment a result was measured in: versions, device, driver, git commit.

Every row carries it (as pytest-benchmark does for its stored results), so a figure can always be
traced to the machine, the package versions and the code that produced it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

from memft_bench.harness.core.paths import PROJECT_ROOT

PACKAGES = ("torch", "transformers", "peft", "galore-torch", "nvidia-ml-py", "pandas", "cupy-cuda12x", "cupy-cuda13x",
            "memft-bench")


def package_versions(stack: dict[str, str]) -> dict[str, str | None]:
    """Every package of the installed `stack` (memft-bench's requirements, followed transitively: what
    `bench env --constraints` needs to reinstall it), plus the key packages by name (None when absent)."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions.update(stack)
    return versions


def lock_differences(stack: dict[str, str]) -> list[str] | None:
    """Where the installed `stack` differs from the repository's lock ([] when it matches); None without a
    lock (a wheel install)."""
    from memft_bench.harness.measure.stack import lock_differences, lock_file, read_lock

    path = lock_file()
    if path is None:
        return None
    try:
        return [str(d) for d in lock_differences(stack, read_lock(path))]
    except (OSError, ValueError) as exc:
        return [f"unreadable lock: {exc}"]


#: a file at the checkout's root holding the commit (`.ci/gpu-prepare` writes it), read where git cannot tell:
#: a copy of the tree without `.git` (a lent GPU machine)
COMMIT_FILE = "COMMIT"


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """HEAD of the harness's checkout, with "+dirty" when the work tree has changes; where git cannot tell (no
    `.git`, no git), the first line of ROOT/COMMIT; None when neither answers."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            lines = (Path(root) / COMMIT_FILE).read_text(encoding="utf-8").split()
        except (OSError, UnicodeDecodeError):
            return None
        return lines[0] if lines else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_uuid(props: Any) -> str | None:
    """NVML's spelling ("GPU-58f7b3a2-...") of the UUID in `torch.cuda.get_device_properties(i)`; None if absent."""
    uuid = getattr(props, "uuid", None)
    if uuid is None:
        return None
    text = str(uuid).strip()
    if not text:
        return None
    return text if text.startswith(("GPU-", "MIG-")) else "GPU-" + text


def cuda_pci_bus_id(props: Any) -> str | None:
    """NVML's spelling ("00000000:1b:00.0", domain:bus:device.function) of a CUDA device's PCI address."""
    try:
        return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    except (AttributeError, TypeError):  # an older torch without the PCI fields
        return None


def cuda_index(device: str | None) -> int | None:
    """The CUDA ordinal a device string names: "cuda:1" -> 1, "cuda" -> None (the current device);
    None for a non-CUDA device. Raises nothing: an unparsable string counts as not CUDA."""
    if not device:
        return None
    kind, _, index = device.strip().lower().partition(":")
    if kind != "cuda":
        return None
    return int(index) if index.isdigit() else None


def gpu_identity(torch: Any, device: str | None) -> dict[str, Any]:
    """Name, UUID and PCI bus id of the GPU the device string names (None values when it names none)."""
    ids: dict[str, Any] = {"gpu_name": None, "gpu_uuid": None, "gpu_pci_bus_id": None}
    if not device or not device.strip().lower().startswith("cuda"):
        return ids
    try:
        index = cuda_index(device)
        if index is None:
            index = torch.cuda.current_device() if torch.cuda.is_initialized() else 0
        props = torch.cuda.get_device_properties(index)
        ids["gpu_name"] = getattr(props, "name", None) or torch.cuda.get_device_name(index)
        ids["gpu_uuid"] = cuda_uuid(props)
        ids["gpu_pci_bus_id"] = cuda_pci_bus_id(props)
    except Exception:  # an index torch does not see, or a CUDA error: record nothing rather than fail the row
        pass
    return ids


def nvml_driver_version() -> str | None:
    """The NVIDIA driver's version from NVML (NVML is shut down again); None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVIDIA driver or no pynvml here
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        return driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def environment(device: str | None = None) -> dict[str, Any]:
    """What a result row records under `env`. Imports torch only if already imported.

    The GPU fields (`gpu_name`, `gpu_uuid`, `gpu_pci_bus_id`) describe the GPU `device` names
    ("cuda:1" -> CUDA ordinal 1, after CUDA_VISIBLE_DEVICES; "cuda" -> the current device); they are
    None for a CPU device, without torch, or without CUDA. `cuda` is torch's CUDA version, `driver`
    the NVIDIA driver's (from NVML).
    """
    import os
    import sys

    from memft_bench.harness.measure.stack import installed_stack

    stack = installed_stack()  # walked once: the packages and their differences from the lock both read it
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(stack),
        "lock_differences": lock_differences(stack),
        "git_commit": git_commit(),
        "device": device,
        "gpu_name": None,
        "gpu_uuid": None,
        "gpu_pci_bus_id": None,
        "cuda": None,
        "driver": None,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env.update(gpu_identity(torch, device))
    env["driver"] = nvml_driver_version()
    return env
