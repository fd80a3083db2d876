"""Tracked runs read back through each tool's own reader: MLflow's client, TensorBoard's event accumulator, and
W&B's offline transaction log (`run-<id>.wandb`) decoded with wandb's own record schema.

Each reader returns plain data keyed the same way, so the tests compare any tracker's runs with the rows, and
the expected figures are computed here from the row schema and harness/core/stats.py, not from
harness/trackers/records.py, so a figure renamed, dropped or changed on the way fails.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memft_bench.harness.core.stats import normal_average, wilson
from memft_bench.harness.results.rows import NUMBERS

MAPPED = (("accuracy_per_task", "accuracy"), ("accuracy_per_task_before", "accuracy_before"),
          ("eval_items", "eval_items"), ("state_elements", "state_elements"), ("state_bytes", "state_bytes"),
          ("method_metrics", "method_metrics"))


def expected_metrics(row: dict) -> dict[str, float]:
    """Every figure of a row by the name a tracker gives it, with the accuracy's 95% intervals."""
    out = {c: row[c] for c in NUMBERS if c != "seed" and row.get(c) is not None}
    for column, prefix in MAPPED:
        out.update({f"{prefix}/{k}": v for k, v in (row.get(column) or {}).items() if v is not None})
    counts = {t: (p, row["eval_items"][t]) for t, p in (row.get("accuracy_per_task") or {}).items()}
    for task, (p, n) in counts.items():
        out[f"accuracy/{task}/ci_low"], out[f"accuracy/{task}/ci_high"] = wilson(round(p * n), n)
    if counts:
        _, out["accuracy_ci_low"], out["accuracy_ci_high"] = normal_average(counts)
    return out


def expected_loss(row: dict, column: str = "loss_curve") -> list[tuple[int, float]]:
    """A curve column of the row at the steps its points were taken (every `steps // 200`-th)."""
    stride = max(1, row["steps"] // 200)
    return [(i * stride, v) for i, v in enumerate(row.get(column) or [])]


#: step series besides the loss, by tracked name: their latest value is no final metric of the row
STEP_SERIES = {"step_time_ms": "step_time_ms_curve"}


def expected_params_text(row: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in row["method_params"].items()}


def check_identity(tags: dict, row: dict) -> None:
    assert tags["suite"] == row["suite"] and tags["task"] == row["task"] and tags["method"] == row["method"]
    assert tags["variant"] == (row["variant"] or "") and tags["seed"] == str(row["seed"])
    assert tags["trial_id"] == row["trial_id"] and tags["status"] == row["status"]
    assert tags["commit"] == row["env"]["git_commit"] and tags["env.git_commit"] == row["env"]["git_commit"]
    assert tags["env.python"] == row["env"]["python"] and tags["env.device"] == row["env"]["device"]
    assert tags["env.packages.torch"] == row["env"]["packages"]["torch"]
    assert tags.get("reason") == row["reason"]


@dataclass
class ReadRun:
    """One tracked run as a reader found it."""

    name: str
    tags: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # final values
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    finished_ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def by_key(runs: list[tuple[str, ReadRun]]) -> dict[str, ReadRun]:
    """Runs by row key (or run id); a key found twice (a row logged twice) fails."""
    keys = [key for key, _ in runs]
    assert len(keys) == len(set(keys)), f"logged more than once: {sorted(k for k in keys if keys.count(k) > 1)}"
    return dict(runs)


def mlflow_runs(tracking_uri: str, experiment: str) -> tuple[list[tuple[str, ReadRun]], Any]:
    """([(row key, child run)], (the parent run, its artifacts)) of the experiment's active runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = []
    for r in runs:
        if "mlflow.parentRunId" not in r.data.tags:
            continue
        series = {name: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, name)]
                  for name in ("loss", *STEP_SERIES)}
        series = {name: points for name, points in series.items() if points or name == "loss"}
        children.append((r.data.tags["row_key"], ReadRun(
            name=r.info.run_name, tags=dict(r.data.tags), params=dict(r.data.params), metrics=dict(r.data.metrics),
            series=series, finished_ok=r.info.status == "FINISHED",
            extra={"parent": r.data.tags["mlflow.parentRunId"], "run_id": r.info.run_id,
                   "artifacts": [a.path for a in client.list_artifacts(r.info.run_id)]})))
    (parent,) = parents
    parent_artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    return children, (parent, parent_artifacts)


def tensorboard_runs(log_dir: Path) -> dict[str, ReadRun]:
    """directory name -> run, for every directory of the log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for directory in sorted(p for p in log_dir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
        texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in ("bench/tags", "bench/params")}
        ok = None
        if "_hparams_/session_end_info" in acc.Tags()["tensors"]:
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

            content = acc.SummaryMetadata("_hparams_/session_end_info").plugin_data.content
            ok = plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status == \
                api_pb2.STATUS_SUCCESS
        out[directory.name] = ReadRun(
            name=directory.name, tags=json.loads(texts["bench/tags"]), params=json.loads(texts["bench/params"]),
            metrics={t: v[-1][1] for t, v in scalars.items() if t not in ("loss", *STEP_SERIES)},
            series={"loss": scalars.get("loss", []), **{t: scalars[t] for t in STEP_SERIES if t in scalars}},
            finished_ok=ok,
            extra={"final_steps": {t: v[-1][0] for t, v in scalars.items() if t not in ("loss", *STEP_SERIES)}})
    return out


# -- W&B --------------------------------------------------------------------------------------------------
HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
RECORD = struct.Struct("<IHB")  # checksum, length, type (1 full, 2 first, 3 middle, 4 last)
BLOCK = 32768


def wandb_records(path: Path) -> list[Any]:
    """The records of a .wandb transaction log (a LevelDB-style log of wandb's `Record` protobufs)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _version = HEADER.unpack_from(data)
    assert ident == b":W&B" and magic == 0xBEE1, path
    records, pending, pos = [], b"", HEADER.size
    while pos + RECORD.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < RECORD.size:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _checksum, length, kind = RECORD.unpack_from(data, pos)
        pos += RECORD.size
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def item_key(item: Any) -> str:
    """A summary, history or config item's key (wandb-core writes it as a one-part `nested_key`)."""
    return item.key or ".".join(item.nested_key)


def item_value(item: Any) -> Any:
    kind = item.WhichOneof("value") if "value" in [o.name for o in item.DESCRIPTOR.oneofs] else None
    if kind and kind != "value_json":
        return getattr(item, kind)
    return json.loads(item.value_json)


def wandb_runs(out_dir: Path) -> list[tuple[str, ReadRun]]:
    """[(run id, run)] for every offline run under `out_dir`/wandb (the report run: DIR/trackers/wandb)."""
    out = []
    for log in sorted((out_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        run, summary, series, exit_code, files = None, {}, {}, None, []
        for record in wandb_records(log):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = record.run
            elif kind == "summary":
                summary.update({item_key(item): json.loads(item.value_json) for item in record.summary.update})
            elif kind == "history":
                for item in record.history.item:
                    if not item_key(item).startswith("_"):
                        series.setdefault(item_key(item), []).append((record.history.step.num, item_value(item)))
            elif kind == "exit":
                exit_code = record.exit.exit_code
            elif kind == "files":
                files += [f.path for f in record.files.files]
        assert run is not None, log
        config = {item_key(item): json.loads(item.value_json) for item in run.config.update
                  if item_key(item) != "_wandb"}
        bench = config.pop("bench", {})
        out.append((run.run_id, ReadRun(
            name=run.display_name, tags=bench, params=config, series=series, finished_ok=exit_code == 0,
            metrics={k: v for k, v in summary.items() if not k.startswith("_")},
            extra={"group": run.run_group, "job_type": run.job_type, "labels": list(run.tags), "files": files,
                   "dir": log.parent})))
    return out
