"""TensorBoard: one directory of event files per trial, written with tensorboard's own writer and protos.

`DIR/tensorboard/<task>__<method>__seed<N>__<fingerprint>/` (`tensorboard --logdir DIR/tensorboard`) holds
the loss curve as the scalar `loss` at its steps, every final metric as a scalar at the last step, the
method's options and the trial's identity in the HParams dashboard, and the tags and parameters as JSON text
(`bench/tags`, `bench/params`). A trial run again by --retry-failed gets `...__attempt2` beside the first.
Scalars are TensorBoard's 32-bit floats (`simple_value`), what `EventAccumulator.Scalars` reads; no
TensorFlow is needed. TensorBoard has no run that stands for the whole sweep (its log directory groups the
trials), so the log directory holds trials only, and the report stays beside it in DIR.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from memft_bench.harness.results.predictions import file_name
from memft_bench.harness.trackers.base import Tracker
from memft_bench.harness.trackers.records import TrackedRun
from memft_bench.harness.trackers.settings import TensorboardSettings

LOG_DIR = "tensorboard"


def run_directory(trial_id: str, attempt: int) -> str:
    name = file_name(trial_id).removesuffix(".jsonl")
    return name if attempt == 0 else f"{name}__attempt{attempt + 1}"


class TensorboardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, out_dir: Path, suite: str, settings: TensorboardSettings) -> None:
        super().__init__(out_dir, suite)
        self.log_dir = Path(settings.log_dir) if settings.log_dir else out_dir / LOG_DIR

    @property
    def destination(self) -> str:
        return "" if self.log_dir == self.out_dir / LOG_DIR else str(self.log_dir.resolve())

    def start(self) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: F401 (installed, working)

        self.log_dir.mkdir(parents=True, exist_ok=True)

    def write(self, directory: Path, events: list[Any]) -> None:
        """A fresh directory holding exactly these events (what an interrupted attempt left is replaced)."""
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if directory.exists():
            shutil.rmtree(directory)
        writer = EventFileWriter(str(directory))
        try:
            for event in events:
                writer.add_event(event)
        finally:
            writer.close()

    def log(self, run: TrackedRun, attempt: int) -> str:
        from tensorboard.compat.proto.summary_pb2 import Summary

        name = run_directory(run.trial_id, attempt)
        events = [hparams_event(run), text_event("bench/tags", json.dumps(run.tags, sort_keys=True), 0),
                  text_event("bench/params", json.dumps(run.params, sort_keys=True), 0)]
        for series, points in run.series.items():
            events += [event(step, Summary.Value(tag=series, simple_value=float(v))) for step, v in points]
        events.append(event(run.steps, *(Summary.Value(tag=k, simple_value=float(v)) for k, v in run.metrics.items())))
        events.append(session_end_event(run.ok, run.steps))
        self.write(self.log_dir / name, events)
        return name


def event(step: int, *values: Any) -> Any:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary

    return Event(wall_time=time.time(), step=step, summary=Summary(value=list(values)))


def text_event(tag: str, content: str, step: int) -> Any:
    """A text summary (the Text dashboard renders it as Markdown)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.types_pb2 import DT_STRING
    from tensorboard.plugins.text.metadata import create_summary_metadata

    tensor = TensorProto(dtype=DT_STRING, string_val=[content.encode("utf-8")])
    return event(step, Summary.Value(tag=tag, tensor=tensor, metadata=create_summary_metadata(tag, "")))


def hparams_plugin_event(tag: str, data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.types_pb2 import DT_FLOAT
    from tensorboard.plugins.hparams.metadata import create_summary_metadata

    return event(0, Summary.Value(tag=tag, metadata=create_summary_metadata(data),
                                  tensor=TensorProto(dtype=DT_FLOAT, float_val=[0.0])))


def hparams_event(run: TrackedRun) -> Any:
    """The HParams dashboard's session: the method's options beside the trial's identity."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(group_name=run.trial_id.rsplit("/", 2)[0],
                                            start_time_secs=time.time())
    identity = {k: run.tags.get(k, "") for k in ("suite", "task", "method", "variant", "seed")}
    for key, value in {**identity, **run.params}.items():
        if isinstance(value, bool):
            info.hparams[key].bool_value = value
        elif isinstance(value, (int, float)):
            info.hparams[key].number_value = value
        else:
            info.hparams[key].string_value = value if isinstance(value, str) else json.dumps(value)
    return hparams_plugin_event(metadata.SESSION_START_INFO_TAG,
                                plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end_event(ok: bool, step: int) -> Any:
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
                                          end_time_secs=time.time())
    return hparams_plugin_event(metadata.SESSION_END_INFO_TAG,
                                plugin_data_pb2.HParamsPluginData(session_end_info=info))
