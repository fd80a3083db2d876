"""The runner's handle on a sweep's trackers: rows and the report go to each, and a failure stays contained.

A tracker that fails (an exception from its library: a server down, a full disk, a bad setting) is reported
in one warning line and left out for the rest of the sweep; the other trackers, the sweep and
`results.jsonl` go on untouched, and the exit status does not change. Rerunning the same command logs what
that tracker missed, since each tracker's ledger says which rows it has.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from memft_bench.harness.core.errors import describe_exception
from memft_bench.harness.trackers.base import Ledger, Tracker, quiet
from memft_bench.harness.trackers.records import TrackedRun, row_key, tracked_run

Warn = Callable[[str], None]


def report_files(report: Path) -> list[Path]:
    """The report and the figures it shows (its `![...](file.png)` links that exist beside it)."""
    try:
        content = report.read_text(encoding="utf-8")
    except OSError:
        return []
    figures = dict.fromkeys(re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", content))
    return [report, *(report.parent / f for f in figures if (report.parent / f).is_file())]


class SweepTrackers:
    """The trackers of one `bench run`: chosen (and their libraries checked) before planning, started by the
    runner under the directory's lock, fed every row, then finished with the report by the command."""

    def __init__(self, trackers: list[Tracker], out_dir: Path) -> None:
        self.trackers = trackers
        self.out_dir = out_dir
        self.ledgers: dict[str, Ledger] = {}
        self.failed: set[str] = set()
        self.started = False
        self.warn: Warn = print
        #: exceptions that stop the sweep and must not be mistaken for a tracker's failure (the runner's
        #: SIGTERM, raised wherever the runner happens to be)
        self.passthrough: tuple[type[BaseException], ...] = ()

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.trackers]

    @property
    def active(self) -> list[Tracker]:
        return [t for t in self.trackers if t.name not in self.failed]

    def attempt(self, tracker: Tracker, action: Callable[[], Any]) -> bool:
        """Run one tracker's action; on failure, one warning and the tracker is off for the rest of the sweep."""
        try:
            with quiet():
                action()
            return True
        except self.passthrough:
            raise
        except Exception as exc:
            self.failed.add(tracker.name)
            # installed but not importable (a broken install, a module of the same name first on the path)
            hint = (f"; reinstall it: pip install 'memft-bench[{tracker.name}]'"
                    if isinstance(exc, ImportError) else "")
            self.warn(f"{tracker.name}: {describe_exception(exc)}{hint}; not logging to {tracker.name} for the rest "
                      f"of this sweep (results.jsonl is unaffected; rerun the same command to log what it missed)")
            return False

    def start(self, warn: Warn, passthrough: tuple[type[BaseException], ...] = ()) -> None:
        """Read the ledgers (under the runner's lock of the directory) and reach every tracker's store before
        the first row, so a broken one is reported at once."""
        self.warn, self.passthrough = warn, passthrough
        if not self.started:
            self.started = True
            for tracker in self.active:
                self.attempt(tracker, lambda t=tracker: self.open(t))

    def open(self, tracker: Tracker) -> None:
        self.ledgers[tracker.name] = Ledger(tracker.ledger_file)
        tracker.start()

    def log_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.log_row(row)

    def log_row(self, row: dict[str, Any]) -> None:
        """Log a row to every tracker that has not logged it yet (the ledger's key is the row's identity)."""
        key = row_key(row)
        run: TrackedRun | None = None
        for tracker in self.active:
            ledger = self.ledgers[tracker.name]
            if key in ledger:
                continue
            run = run or tracked_run(row)
            self.attempt(tracker, lambda t=tracker, r=run, ledger=ledger: ledger.add(
                r, t.log(r, ledger.attempts(r.trial_id))))

    def finish(self, report: Path | None, warn: Warn) -> None:
        """After the sweep: the report and its figures (when one was written), then each tracker closes."""
        if not self.started:
            return
        self.warn = warn
        files = report_files(report) if report is not None else []
        for tracker in self.active:
            if not files or self.attempt(tracker, lambda t=tracker: t.log_report(files)):
                self.attempt(tracker, tracker.finish)
