"""harness.sources.fetch against a stand-in of the file servers (LLM-Adapters', GSM8K's) that the test starts on
localhost."""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from memft_bench.harness.core.errors import BenchError
from memft_bench.harness.sources import fetch
from tests.commands import REPO_ROOT

ROOT = REPO_ROOT
# ../shared/data beside the project (a git worktree one level deeper finds it two levels up)
SHARED = next((p / "shared" / "data" / "commonsense" for p in (ROOT.parent, ROOT.parent.parent)
               if (p / "shared" / "data" / "commonsense").is_dir()), ROOT.parent / "shared" / "data" / "commonsense")


def _files(root: Path) -> tuple[fetch.DataFile, ...]:
    """Two small files laid out as the repository lays them out, with their ids computed by git itself."""
    made = []
    for local, remote, records in [("boolq/test.json", "dataset/boolq/test.json", [{"answer": "true"}]),
                                   ("commonsense_170k.json", "ft-training_set/commonsense_170k.json",
                                    [{"answer": "false"}] * 500)]:
        path = root / remote
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records), encoding="utf-8")
        blob = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
        made.append(fetch.DataFile(local, remote, blob.stdout.strip()))
    return tuple(made)


@pytest.fixture
def server(tmp_path):
    """(base URL, served root, a list of the paths requested) of a local HTTP server."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", root, requests
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    monkeypatch.delenv(fetch.OFFLINE_ENV, raising=False)


def test_git_blob_id_is_gits(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'[{"a": 1}]\n')
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, check=True)
    assert fetch.git_blob_id(path) == expected.stdout.strip()


def test_downloads_verifies_and_then_reuses_without_the_network(server, tmp_path):
    url, root, requests = server
    files = _files(root)
    target = tmp_path / "cache" / "commonsense"
    assert fetch.fetch_commonsense(target, url, progress=False, files=files) == target
    for f in files:
        assert (target / f.local).read_bytes() == (root / f.remote).read_bytes()
    assert fetch.is_complete(target, files)
    assert not list(target.rglob("*.part"))
    n = len(requests)
    assert n == len(files)
    fetch.fetch_commonsense(target, url, progress=False, files=files)
    assert len(requests) == n  # once: the second call reads the marker and downloads nothing


def test_a_file_that_does_not_match_its_checksum_is_refused_and_discarded(server, tmp_path):
    url, root, _ = server
    files = _files(root)
    (root / files[1].remote).write_text("[]", encoding="utf-8")  # the server now serves other bytes
    target = tmp_path / "cache"
    with pytest.raises(BenchError, match="does not match LLM-Adapters' file"):
        fetch.fetch_commonsense(target, url, progress=False, files=files)
    assert not (target / files[1].local).exists() and not list(target.rglob("*.part"))
    assert not fetch.is_complete(target, files)


def test_unreachable_server_is_one_line_that_says_how_to_copy_the_data(tmp_path):
    with pytest.raises(BenchError) as info:
        fetch.fetch_commonsense(tmp_path / "c", "http://127.0.0.1:9/", progress=False)  # the discard port
    message = str(info.value)
    assert "\n" not in message and "--data-dir DIR" in message and "downloading" in message


def test_offline_switch_never_touches_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    with pytest.raises(BenchError, match="--data-dir DIR"):
        fetch.fetch_commonsense(tmp_path / "c", "http://127.0.0.1:9/", progress=False)


def test_run_without_a_data_dir_uses_the_fetched_cache(server, tmp_path, monkeypatch):
    """resolve_data_dir with nothing given fetches into the cache (here from the stand-in server)."""
    from memft_bench.harness.sources import commonsense

    url, root, _ = server
    files = _files(root)
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(commonsense.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(fetch.URL_ENV, url)
    monkeypatch.setattr(fetch, "FILES", files)
    monkeypatch.setattr(fetch.fetch_commonsense, "__defaults__", (None, None, False, files))
    assert commonsense.resolve_data_dir(None) == tmp_path / "cache" / "data" / "commonsense"


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs the shared commonsense data")
@pytest.mark.parametrize("f", fetch.FILES[1:], ids=lambda f: f.local)
def test_pinned_ids_are_those_of_the_published_test_files(f):
    """The shared copies of the test sets are LLM-Adapters' files byte for byte: their ids are the pinned ones."""
    assert fetch.git_blob_id(SHARED / f.local) == f.blob


# -- the math data: two repositories ---------------------------------------------------------------------------
def _math_files(root: Path) -> tuple[fetch.DataFile, ...]:
    """Stand-ins of GSM8K's two files and two LLM-Adapters test sets, each at its repository path under
    `root/<repo>/<commit>/` (a mirror that keeps repositories apart) and under `root/` (a flat mirror)."""
    made = []
    for local, remote, repo, commit, text in [
        ("gsm8k/train.jsonl", "grade_school_math/data/train.jsonl", fetch.GSM8K_REPO, fetch.GSM8K_COMMIT,
         '{"question": "q", "answer": "1+1=<<1+1=2>>2\\n#### 2"}\n' * 300),
        ("gsm8k/test.jsonl", "grade_school_math/data/test.jsonl", fetch.GSM8K_REPO, fetch.GSM8K_COMMIT,
         '{"question": "t", "answer": "#### 1,000"}\n'),
        ("math/SVAMP/test.json", "dataset/SVAMP/test.json", fetch.LLM_ADAPTERS, fetch.COMMIT,
         json.dumps([{"instruction": "i", "input": "", "output": "o", "answer": "8.0"}])),
        ("math/AQuA/test.json", "dataset/AQuA/test.json", fetch.LLM_ADAPTERS, fetch.COMMIT,
         json.dumps([{"instruction": "i", "input": "", "output": "o", "answer": "B"}])),
    ]:
        for path in (root / remote, root / repo / commit / remote):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        blob = subprocess.run(["git", "hash-object", str(root / remote)], capture_output=True, text=True, check=True)
        made.append(fetch.DataFile(local, remote, blob.stdout.strip(), repo, commit))
    return tuple(made)


def test_math_files_are_pinned_to_full_commits_of_their_repositories():
    assert len(fetch.GSM8K_COMMIT) == len(fetch.COMMIT) == 40 and fetch.GSM8K_COMMIT.startswith("3101c7d")
    urls = {f.local: fetch.source_url(fetch.BASE_URL, f) for f in fetch.MATH_FILES}
    assert urls["gsm8k/train.jsonl"] == ("https://raw.githubusercontent.com/openai/grade-school-math/"
                                         "3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/train.jsonl")
    assert urls["math/AQuA/test.json"] == ("https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/"
                                           f"{fetch.COMMIT}/dataset/AQuA/test.json")
    assert len(urls) == len(fetch.MATH_FILES) == 8
    assert all(len(f.blob) == 40 for f in fetch.MATH_FILES)
    # the commonsense files keep their URLs
    assert fetch.source_url(fetch.BASE_URL, fetch.FILES[1]) == ("https://raw.githubusercontent.com/AGI-Edgerunners/"
                                                                f"LLM-Adapters/{fetch.COMMIT}/dataset/boolq/test.json")


def test_fetch_math_from_a_flat_mirror_then_reuses_it(server, tmp_path):
    url, root, requests = server
    files = _math_files(root)
    target = tmp_path / "cache" / "math"
    assert fetch.fetch_math(target, url, progress=False, files=files) == target
    for f in files:
        assert (target / f.local).read_bytes() == (root / f.remote).read_bytes()
    assert sorted(requests) == sorted(f"/{f.remote}" for f in files)
    assert fetch.is_complete(target, files) and not list(target.rglob("*.part"))
    fetch.fetch_math(target, url, progress=False, files=files)
    assert len(requests) == len(files)  # the marker: no second download

    from memft_bench.harness.sources import math_data

    assert math_data.load_gsm8k_split(target, "train")[0]["answer"] == "2"
    assert math_data.load_math_test_items(target, "AQuA")[1][0]["answer"] == "B"


def test_fetch_math_from_a_mirror_that_keeps_repositories_apart(server, tmp_path, monkeypatch):
    url, root, requests = server
    files = _math_files(root)
    monkeypatch.setenv(fetch.URL_ENV, url + "{repo}/{commit}/")
    target = fetch.fetch_math(tmp_path / "m", progress=False, files=files)
    assert sorted(requests) == sorted(f"/{f.repo}/{f.commit}/{f.remote}" for f in files)
    assert all((target / f.local).is_file() for f in files)


def test_a_subset_then_the_whole_set_downloads_each_file_once(server, tmp_path):
    url, root, requests = server
    files = _math_files(root)
    target = tmp_path / "m"
    fetch.fetch_math(target, url, progress=False, files=files[:2])
    assert len(requests) == 2 and not fetch.is_complete(target, files)
    fetch.fetch_math(target, url, progress=False, files=files)
    assert len(requests) == 4 and fetch.is_complete(target, files)
    fetch.fetch_math(target, url, progress=False, files=files[2:])
    assert len(requests) == 4 and fetch.is_complete(target, files)  # the marker still lists all four


def test_a_math_file_that_does_not_match_is_refused_and_discarded(server, tmp_path):
    url, root, _ = server
    files = _math_files(root)
    (root / files[0].remote).write_text('{"question": "q", "answer": "#### 3"}\n', encoding="utf-8")
    target = tmp_path / "m"
    with pytest.raises(BenchError) as info:
        fetch.fetch_math(target, url, progress=False, files=files)
    message = str(info.value)
    assert "\n" not in message and "does not match GSM8K's file at 3101c7d507" in message
    assert "grade_school_math/data/train.jsonl" in message and "DIR/gsm8k/train.jsonl" in message
    assert not (target / files[0].local).exists() and not list(target.rglob("*.part"))
    assert not fetch.is_complete(target, files)


def test_math_offline_is_one_line_naming_what_to_copy_where(monkeypatch, tmp_path):
    monkeypatch.setenv(fetch.OFFLINE_ENV, "1")
    with pytest.raises(BenchError) as info:
        fetch.fetch_math(tmp_path / "m", "http://127.0.0.1:9/", progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("no math data directory, and $BENCH_OFFLINE forbids")
    for needle in ("grade_school_math/data/train.jsonl", "DIR/gsm8k/train.jsonl", "DIR/gsm8k/test.jsonl",
                   "dataset/<task>/test.json", "DIR/math/<task>/test.json", "--data-dir DIR", "$BENCH_DATA_DIR"):
        assert needle in message, needle
    assert not (tmp_path / "m").exists()


def test_math_unreachable_server_is_one_line(monkeypatch, tmp_path):
    with pytest.raises(BenchError) as info:
        fetch.fetch_math(tmp_path / "m", "http://127.0.0.1:9/", progress=False)  # the discard port
    message = str(info.value)
    assert "\n" not in message and "downloading http://127.0.0.1:9/grade_school_math/data/train.jsonl" in message
    assert "DIR/gsm8k/train.jsonl" in message


def test_math_run_without_a_data_dir_uses_the_fetched_cache(server, tmp_path, monkeypatch):
    from memft_bench.harness.sources import commonsense, math_data

    url, root, _ = server
    monkeypatch.setattr(fetch, "MATH_FILES", _math_files(root))
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(commonsense.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(fetch.URL_ENV, url)
    got = math_data.resolve_math_dir(None)
    assert got == tmp_path / "cache" / "data" / "math"
    assert len(math_data.load_gsm8k_split(got, "train")) == 300
