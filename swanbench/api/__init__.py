"""The public API for your own code: build a preset, measure your own loop or a Hugging Face Trainer run
into the harness's tables, and load any results directory as pandas frames.

- `build_model(name, dtype=, device=, seed=)`: a preset LLaMA (`swanbench list models`), random init.
- `RunRecorder(model, optimizer, out=...)`: a `RunMeter` around your loop, writing the same runs.csv row and
  curves.csv rows as a suite's run (`swanbench.api.record`).
- `SwanbenchCallback(out, seq_len=...)`: the same for `transformers.Trainer` (`swanbench.api.trainer`;
  imported on first use: it imports transformers).
- `load(dir)`: `Tables(runs, curves, ranks, kernels)`, one row per run (`swanbench.api.frames`).

`import swanbench` stays light: these names are imported from here on first access (`swanbench.load`, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_model", "RunRecorder", "SwanbenchCallback", "load", "Tables", "RunMeter"]

# name -> "module:attribute", imported on first access
LAZY = {
    "build_model": "swanbench.models:build_model",
    "RunRecorder": "swanbench.api.record:RunRecorder",
    "SwanbenchCallback": "swanbench.api.trainer:SwanbenchCallback",
    "load": "swanbench.api.frames:load",
    "Tables": "swanbench.api.frames:Tables",
    "RunMeter": "swanbench.trackers:RunMeter",
}


def resolve(name: str) -> Any:
    """The object behind a public name (AttributeError for another name)."""
    if name not in LAZY:
        raise AttributeError(f"module 'swanbench' has no attribute {name!r}")
    module, _, attr = LAZY[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def __getattr__(name: str) -> Any:
    return resolve(name)
