"""The commonsense data on a fresh machine: LLM-Adapters' published files, downloaded once into the cache.

When no data directory is given (`--data-dir`, `$BENCH_DATA_DIR`), `bench run --suite commonsense` fetches
what the suite reads — the eight test sets and the published training mix `commonsense_170k.json` — from
LLM-Adapters' GitHub repository, pinned to one commit, into `<cache>/data/commonsense/` (the cache is
`harness.core.cache.cache_dir()`), with a progress bar. Each file is verified against the git blob id that
commit's tree lists for it (SHA-1 of `blob <size>\\0` + the bytes: the repository's own checksum, so a
truncated, altered or substituted file is refused) and then moved into place atomically; once every file is
verified a marker records it, and later runs reuse the directory without touching the network.

Offline (no route, or `$BENCH_OFFLINE=1`), the run stops with one line saying how to put the data on the
machine. `$BENCH_DATA_URL` replaces the base URL (a mirror holding the same paths; the tests serve a
stand-in from a local HTTP server). No torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from memft_bench.harness.core.errors import BenchError

COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"
BASE_URL = f"https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/{COMMIT}/"
URL_ENV = "BENCH_DATA_URL"
OFFLINE_ENV = "BENCH_OFFLINE"
MARKER = ".verified"


@dataclass(frozen=True)
class DataFile:
    local: str  # path under the data directory, in the layout harness.sources.commonsense reads
    remote: str  # path in the repository
    blob: str  # git blob id of the file at COMMIT


#: What the commonsense suite reads, with the blob ids of LLM-Adapters' tree at COMMIT.
FILES = (
    DataFile("commonsense_170k.json", "ft-training_set/commonsense_170k.json",
             "529e426b33d4cdb1d0c4a275a1a7245ad081fd91"),
    DataFile("boolq/test.json", "dataset/boolq/test.json", "6d7edb0a8e8a6566b546ccf0d98d24e48db3fdf3"),
    DataFile("piqa/test.json", "dataset/piqa/test.json", "f7a1c260692ef31796d4763cb6334f316a754fed"),
    DataFile("social_i_qa/test.json", "dataset/social_i_qa/test.json", "eadf221799ca394367b144c0f86ee0436db409d2"),
    DataFile("hellaswag/test.json", "dataset/hellaswag/test.json", "183c4920415f83ba4b793c4873a33e7e10bd1be5"),
    DataFile("winogrande/test.json", "dataset/winogrande/test.json", "21257263593dd4d00546e1918c88ca0f357b08ad"),
    DataFile("ARC-Challenge/test.json", "dataset/ARC-Challenge/test.json", "9540685439144200b5a7e48dab9ca4655be2af09"),
    DataFile("ARC-Easy/test.json", "dataset/ARC-Easy/test.json", "6c0d30aaedaeca148df6bcd7aaacf7c31e6ad70f"),
    DataFile("openbookqa/test.json", "dataset/openbookqa/test.json", "a6e69676104bcb77237388c3b5a3f0dcbb81d1e2"),
)

HOW_TO_COPY = ("copy LLM-Adapters' files onto this machine (dataset/<task>/test.json for the 8 tasks and "
               "ft-training_set/commonsense_170k.json, or the 8 dataset/<task>/train.json) as DIR/<task>/test.json "
               "and DIR/commonsense_170k.json, then pass --data-dir DIR or set $BENCH_DATA_DIR")


def git_blob_id(path: Path) -> str:
    """The id git gives a file's bytes: SHA-1 of `blob <size>\\0` followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_dir() -> Path:
    from memft_bench.harness.core.cache import cache_dir

    return cache_dir() / "data" / "commonsense"


def _manifest(files: tuple[DataFile, ...]) -> str:
    return "".join(f"{f.blob} {f.local}\n" for f in files)


def is_complete(directory: Path, files: tuple[DataFile, ...] = FILES) -> bool:
    """Every file was downloaded and verified (the marker lists exactly these files and ids)."""
    marker = directory / MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8") == _manifest(files) and all(
        (directory / f.local).is_file() for f in files)


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One download at a time into a directory (two runs started together share the result)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(url: str, target: Path, label: str, progress: bool) -> None:
    from tqdm import tqdm

    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:  # noqa: S310 (https/http)
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=not progress, file=sys.stderr,
                  leave=False) as bar:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                out.write(chunk)
                bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())


def fetch_commonsense(directory: Path | None = None, base_url: str | None = None, progress: bool = True,
                      files: tuple[DataFile, ...] = FILES) -> Path:
    """The verified data directory, downloading what is missing or wrong; one `BenchError` line on failure."""
    directory = directory or default_dir()
    if is_complete(directory, files):
        return directory
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise BenchError(f"no commonsense data directory, and ${OFFLINE_ENV} forbids downloading it: {HOW_TO_COPY}")
    base = (base_url or os.environ.get(URL_ENV) or BASE_URL).rstrip("/") + "/"
    with _lock(directory):
        if is_complete(directory, files):  # another run fetched it while this one waited
            return directory
        print(f"bench: fetching the commonsense data ({len(files)} files of LLM-Adapters at {COMMIT[:10]}) into "
              f"{directory}", file=sys.stderr, flush=True)
        for i, f in enumerate(files, 1):
            target = directory / f.local
            if target.is_file() and git_blob_id(target) == f.blob:
                continue
            url = base + f.remote
            part = target.with_name(target.name + ".part")
            try:
                _download(url, target, f"[{i}/{len(files)}] {f.local}", progress)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                part.unlink(missing_ok=True)
                reason = getattr(exc, "reason", None) or exc
                raise BenchError(f"no commonsense data directory, and downloading {url} failed ({reason}): "
                                 f"{HOW_TO_COPY}") from None
            got = git_blob_id(part)
            if got != f.blob:
                part.unlink(missing_ok=True)
                raise BenchError(f"{url}: the download does not match LLM-Adapters' file (git blob {got[:12]}, "
                                 f"expected {f.blob[:12]}); it was discarded: check $BENCH_DATA_URL or {HOW_TO_COPY}")
            os.replace(part, target)
        tmp = directory / (MARKER + ".tmp")
        tmp.write_text(_manifest(files), encoding="utf-8")
        os.replace(tmp, directory / MARKER)
    return directory
