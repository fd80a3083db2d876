"""Public data on a fresh machine: the pinned files a suite reads, downloaded once into the cache.

When no data directory is given (`--data-dir`, `$BENCH_DATA_DIR`), a suite fetches what it reads into
`<cache>/data/<name>/` (the cache is `harness.core.cache.cache_dir()`), with a progress bar:

- `fetch_commonsense` -> `<cache>/data/commonsense/`: LLM-Adapters' eight test sets and the published training
  mix `commonsense_170k.json` (the layout `harness.sources.commonsense` reads);
- `fetch_math` -> `<cache>/data/math/`: GSM8K's `train.jsonl`/`test.jsonl` (openai/grade-school-math) as
  `gsm8k/{train,test}.jsonl`, and LLM-Adapters' arithmetic test sets as `math/<task>/test.json` (the layout
  `harness.sources.math_data` reads).

Every file is pinned to one commit of its repository (`DataFile.repo`, `DataFile.commit`) and verified against
the git blob id that commit's tree lists for it (SHA-1 of `blob <size>\\0` + the bytes: the repository's own
checksum, so a truncated, altered or substituted file is refused), then moved into place atomically; once
every file is verified a marker records it, and later runs reuse the directory without touching the network.
One download at a time per directory (a lock: two runs started together share the result).

Offline (no route, or `$BENCH_OFFLINE=1`), the run stops with one line saying what to copy where.

Mirrors: `$BENCH_DATA_URL` (or `base_url=`) replaces the default base, `https://raw.githubusercontent.com/
{repo}/{commit}/`. Each file is requested at the base followed by its path in its repository; `{repo}` and
`{commit}` in the base, when present, are replaced by the file's own repository (`owner/name`) and commit. So a
flat mirror serves every file at its repository path (the repositories' paths do not overlap: LLM-Adapters'
`dataset/...` and `ft-training_set/...`, GSM8K's `grade_school_math/data/...`; the tests serve a stand-in from
a local HTTP server this way), and a mirror that keeps repositories apart is named as, e.g.,
`https://mirror.example/{repo}/{commit}/`. No torch here.
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

LLM_ADAPTERS = "AGI-Edgerunners/LLM-Adapters"
COMMIT = "816657208af4db747803f87ba40a4c71383fed7a"  # LLM-Adapters
GSM8K_REPO = "openai/grade-school-math"
GSM8K_COMMIT = "3101c7d5072418e28b9008a6636bde82a006892c"  # the head of its master branch ("update readme", 2021-11-19)
#: The default base: `{repo}` and `{commit}` are each file's own.
BASE_URL = "https://raw.githubusercontent.com/{repo}/{commit}/"
URL_ENV = "BENCH_DATA_URL"
OFFLINE_ENV = "BENCH_OFFLINE"
MARKER = ".verified"
#: How messages name a repository's files.
REPO_NAMES = {LLM_ADAPTERS: "LLM-Adapters", GSM8K_REPO: "GSM8K"}


@dataclass(frozen=True)
class DataFile:
    local: str  # path under the data directory, in the layout the suite's reader expects
    remote: str  # path in the repository
    blob: str  # git blob id of the file at `commit`
    repo: str = LLM_ADAPTERS  # owner/name on GitHub
    commit: str = COMMIT  # the full commit hash the file is pinned to

    @property
    def source(self) -> str:
        """The repository's name as messages use it ("LLM-Adapters", "GSM8K")."""
        return REPO_NAMES.get(self.repo, self.repo.rsplit("/", 1)[-1])


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


def _gsm8k(split: str, blob: str) -> DataFile:
    return DataFile(f"gsm8k/{split}.jsonl", f"grade_school_math/data/{split}.jsonl", blob, GSM8K_REPO, GSM8K_COMMIT)


def _math(task: str, blob: str) -> DataFile:
    return DataFile(f"math/{task}/test.json", f"dataset/{task}/test.json", blob)


#: What the math suite reads: GSM8K's release at GSM8K_COMMIT (training and the main test set) and
#: LLM-Adapters' arithmetic test sets at COMMIT (optional extra test sets; their gsm8k is GSM8K's test set,
#: so it is not fetched), with the blob ids of each commit's tree.
MATH_FILES = (
    _gsm8k("train", "7d97154b91aef28d01c3301741c81ce90039a4b1"),
    _gsm8k("test", "e4c2ff4942b9a78bd74f04141224c11e28d12dc9"),
    _math("AddSub", "f3996cdf4159b4e1e4b6768865a4db72105f4e2f"),
    _math("MultiArith", "08e996c6cd8c633cc977f5c50709a8bbfc8fadff"),
    _math("SingleEq", "cce7a868400323e30e2094a15d482c1aa743dbb0"),
    _math("SVAMP", "98b8f1872db596f8aaff2c95d1d698a9fa13b94f"),
    _math("AQuA", "731fbb456f7a93bb4121125de09c4adcf42e5dab"),
    _math("mawps", "eca473c5b5d398acbae0b84ede833bbbccd63add"),
)

MATH_HOW_TO_COPY = (f"copy GSM8K's grade_school_math/data/train.jsonl and test.jsonl ({GSM8K_REPO} at "
                    f"{GSM8K_COMMIT[:7]}) as DIR/gsm8k/train.jsonl and DIR/gsm8k/test.jsonl and, for the extra "
                    f"test sets, LLM-Adapters' dataset/<task>/test.json (at {COMMIT[:7]}) as "
                    "DIR/math/<task>/test.json, then pass --data-dir DIR or set $BENCH_DATA_DIR")


def git_blob_id(path: Path) -> str:
    """The id git gives a file's bytes: SHA-1 of `blob <size>\\0` followed by the bytes."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_dir(name: str = "commonsense") -> Path:
    """`<cache>/data/<name>`: where `fetch_commonsense` ("commonsense") and `fetch_math` ("math") put the files."""
    from memft_bench.harness.core.cache import cache_dir

    return cache_dir() / "data" / name


def _manifest(entries: dict[str, str]) -> str:
    return "".join(f"{blob} {local}\n" for local, blob in entries.items())


def _verified(directory: Path) -> dict[str, str]:
    """What the marker lists as verified: local path -> blob id."""
    marker = directory / MARKER
    if not marker.is_file():
        return {}
    listed = {}
    for line in marker.read_text(encoding="utf-8", errors="replace").splitlines():
        blob, _, local = line.partition(" ")
        if local:
            listed[local] = blob
    return listed


def is_complete(directory: Path, files: tuple[DataFile, ...] = FILES) -> bool:
    """Every one of `files` was downloaded and verified (the marker lists each with its pinned id) and is there."""
    listed = _verified(directory)
    return all(listed.get(f.local) == f.blob and (directory / f.local).is_file() for f in files)


def source_url(base: str, f: DataFile) -> str:
    """Where `f` is downloaded from: `base` with `{repo}`/`{commit}` replaced by the file's own, then its path."""
    return base.replace("{repo}", f.repo).replace("{commit}", f.commit).rstrip("/") + "/" + f.remote


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


def _describe(files: tuple[DataFile, ...]) -> str:
    """"8 files: 2 of GSM8K at 3101c7d507, 6 of LLM-Adapters at 8166572082"."""
    counts: dict[tuple[str, str], int] = {}
    for f in files:
        counts[f.source, f.commit] = counts.get((f.source, f.commit), 0) + 1
    if len(counts) == 1:
        (source, commit), n = next(iter(counts.items()))
        return f"{n} files of {source} at {commit[:10]}"
    return f"{len(files)} files: " + ", ".join(f"{n} of {s} at {c[:10]}" for (s, c), n in counts.items())


def _possessive(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def fetch_files(name: str, files: tuple[DataFile, ...], how_to_copy: str, directory: Path | None = None,
                base_url: str | None = None, progress: bool = True) -> Path:
    """`directory` (default `<cache>/data/<name>`) holding every one of `files`, verified, downloading what is
    missing or wrong; one `BenchError` line, ending with `how_to_copy`, on failure."""
    directory = directory or default_dir(name)
    if is_complete(directory, files):
        return directory
    if os.environ.get(OFFLINE_ENV, "").strip() not in ("", "0"):
        raise BenchError(f"no {name} data directory, and ${OFFLINE_ENV} forbids downloading it: {how_to_copy}")
    base = base_url or os.environ.get(URL_ENV) or BASE_URL
    with _lock(directory):
        if is_complete(directory, files):  # another run fetched it while this one waited
            return directory
        print(f"bench: fetching the {name} data ({_describe(files)}) into {directory}", file=sys.stderr, flush=True)
        for i, f in enumerate(files, 1):
            target = directory / f.local
            if target.is_file() and git_blob_id(target) == f.blob:
                continue
            url = source_url(base, f)
            part = target.with_name(target.name + ".part")
            try:
                _download(url, target, f"[{i}/{len(files)}] {f.local}", progress)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                part.unlink(missing_ok=True)
                reason = getattr(exc, "reason", None) or exc
                raise BenchError(f"no {name} data directory, and downloading {url} failed ({reason}): "
                                 f"{how_to_copy}") from None
            got = git_blob_id(part)
            if got != f.blob:
                part.unlink(missing_ok=True)
                raise BenchError(f"{url}: the download does not match {_possessive(f.source)} file at "
                                 f"{f.commit[:10]} (git blob {got[:12]}, expected {f.blob[:12]}); it was discarded: "
                                 f"check ${URL_ENV} or {how_to_copy}")
            os.replace(part, target)
        # keep what an earlier fetch of other files verified (still there), then these files with their ids
        entries = {local: blob for local, blob in _verified(directory).items()
                   if (directory / local).is_file() and local not in {f.local for f in files}}
        entries.update((f.local, f.blob) for f in files)
        tmp = directory / (MARKER + ".tmp")
        tmp.write_text(_manifest(entries), encoding="utf-8")
        os.replace(tmp, directory / MARKER)
    return directory


def fetch_commonsense(directory: Path | None = None, base_url: str | None = None, progress: bool = True,
                      files: tuple[DataFile, ...] = FILES) -> Path:
    """The verified commonsense directory (`<cache>/data/commonsense` by default), downloading what is missing
    or wrong; one `BenchError` line on failure."""
    return fetch_files("commonsense", files, HOW_TO_COPY, directory, base_url, progress)


def fetch_math(directory: Path | None = None, base_url: str | None = None, progress: bool = True,
               files: tuple[DataFile, ...] | None = None) -> Path:
    """The verified math directory (`<cache>/data/math` by default: `gsm8k/{train,test}.jsonl` and
    `math/<task>/test.json`), downloading what is missing or wrong; `files` defaults to `MATH_FILES`, looked up
    when called. One `BenchError` line on failure."""
    return fetch_files("math", MATH_FILES if files is None else files, MATH_HOW_TO_COPY, directory, base_url,
                       progress)
