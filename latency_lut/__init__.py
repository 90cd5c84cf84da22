"""Latency lookup tables: per-block latencies measured on a device, and what they predict.

>>> from latency_lut import load_lut, predict_ms, shipped_lut
>>> from supernet import load_space
>>> space = load_space("efficientformer-v1")
>>> lut = load_lut(shipped_lut(space))
>>> predict_ms(space.preset("L1"), lut)   # doctest: +SKIP

See ``docs/latency_lut.md`` for the concepts, the file format and the Core ML path.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from supernet.errors import ConfigError
from supernet.space import SearchSpace

from latency_lut._backends import BACKENDS, ONNX_OPSET, Backend, get_backend, onnx_bytes
from latency_lut._build import BuildConfig, BuildResult, build_lut, calibration_specs, recalibrate
from latency_lut._calibration import Calibration, CalibrationModel, fit_calibration
from latency_lut._check import CheckConfig, CheckReport, check_lut, check_specs, plot_check
from latency_lut._fastest import fastest_subnet
from latency_lut._health import Staleness, assess_quality, check_staleness, quality_warning, staleness_warning
from latency_lut._keys import CATEGORIES, OpUnit, PlacedUnit, category_of, op_keys, op_units, parse_key, space_keys, space_units
from latency_lut._measure import CONTEXTS, MAX_BATCH, STATISTICS, Timing, check_batch, measure_model, time_models
from latency_lut._recalibrate import RecalibrationResult, recalibrate_here
from latency_lut._stats import PredictionStats, linear_fit, prediction_stats
from latency_lut._table import LatencyTable, load_lut, predict_ms, save_lut

__all__ = [
    "BACKENDS",
    "CATEGORIES",
    "CONTEXTS",
    "MAX_BATCH",
    "ONNX_OPSET",
    "STATISTICS",
    "Backend",
    "BuildConfig",
    "BuildResult",
    "Calibration",
    "CalibrationModel",
    "CheckConfig",
    "CheckReport",
    "LatencyTable",
    "OpUnit",
    "PlacedUnit",
    "PredictionStats",
    "RecalibrationResult",
    "Staleness",
    "Timing",
    "assess_quality",
    "build_lut",
    "calibration_specs",
    "category_of",
    "check_lut",
    "check_staleness",
    "check_specs",
    "fit_calibration",
    "fastest_subnet",
    "get_backend",
    "linear_fit",
    "load_lut",
    "measure_model",
    "onnx_bytes",
    "op_keys",
    "op_units",
    "parse_key",
    "plot_check",
    "predict_ms",
    "prediction_stats",
    "quality_warning",
    "recalibrate",
    "recalibrate_here",
    "save_lut",
    "shipped_lut",
    "shipped_tables",
    "space_keys",
    "space_units",
    "staleness_warning",
    "time_models",
]


def shipped_tables() -> list[Path]:
    """The tables that come with the tool (``latency_lut/tables/*.json``, check results excluded)."""
    folder = Path(str(resources.files("latency_lut") / "tables"))
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(".check.json"))


def shipped_lut(space: SearchSpace, backend: str = "onnxruntime", threads: int = 1, *, batch: int = 1) -> Path | None:
    """The shipped table for ``space`` (matched by fingerprint) on ``backend`` at ``threads`` and
    ``batch`` images per call, or None. Its latencies are those of the machine it was measured on
    (``meta.device``); recalibrate or rebuild for another machine."""
    check_batch(batch)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ConfigError("threads", f"must be a non-negative integer, got {threads!r}")
    for path in shipped_tables():
        try:
            meta = json.loads(path.read_text()).get("meta", {})
        except (OSError, json.JSONDecodeError):
            continue
        if (
            meta.get("space", {}).get("fingerprint") == space.fingerprint()
            and meta.get("backend") == backend
            and meta.get("threads") == threads
            and meta.get("batch", 1) == batch
        ):
            return path
    return None
