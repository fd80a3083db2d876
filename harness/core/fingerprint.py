"""Fingerprints: a short stable hash of a trial's whole configuration, the key that lets a run resume.

Two trials with the same fingerprint would produce the same result, so a rerun skips the recorded one;
any change of option makes a new id instead of silently reusing an old row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

#: Fields added to the schema after results were recorded, with their defaults: left out of fingerprints
#: while at the default, so a run directory recorded before they existed resumes (its trial ids still
#: match) instead of running every trial again. A new field that changes nothing at its default goes here.
LATER_FIELD_DEFAULTS: dict[str, Any] = {"vocab_size": 32000, "tie_word_embeddings": False,
                                        "gradient_checkpointing": False,
                                        # a task's own-data fields (source: file) and its report family
                                        "train_file": None, "test_file": None, "test_fraction": 0.2, "columns": {},
                                        "scoring": "", "options": [], "answer_regex": None, "family": "",
                                        "validation_size": 0, "time_s": 0.0}


def _without_later_defaults(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_later_defaults(v) for k, v in data.items()
                if not (k in LATER_FIELD_DEFAULTS and v == LATER_FIELD_DEFAULTS[k] and type(v) is
                        type(LATER_FIELD_DEFAULTS[k]))}
    if isinstance(data, list):
        return [_without_later_defaults(v) for v in data]
    return data


def fingerprint(data: Any) -> str:
    """A short stable hash of plain data: identifies a trial's full configuration for resuming."""
    blob = json.dumps(_without_later_defaults(data), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]
