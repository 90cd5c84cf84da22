"""Calibration: from the sum of separately measured blocks to the latency of a whole network.

A block measured alone is not priced exactly as it runs inside a network (caches, the session's
fixed cost, layout changes), and the difference depends on the kind of block. The table therefore
stores a small model, fitted on whole networks measured end to end::

    predicted = overhead_ms + sum over categories c of scale[c] * (sum of the c-entries of the spec)

with one scale per category (stem, embed, meta4d, meta3d incl. flat, head), all non-negative,
fitted by non-negative least squares on relative error (one shared scale when there are too few
networks for five). The sums are of the entries less the fixed cost of one backend call
(measured with the units), which a network pays once, not per block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from supernet.errors import EfnasError

from latency_lut._keys import CATEGORIES
from latency_lut._measure import Timing

__all__ = ["Calibration", "CalibrationModel", "fit_calibration"]

PER_CATEGORY_MIN = 2 * (len(CATEGORIES) + 1)


@dataclass(frozen=True, kw_only=True)
class CalibrationModel(Timing):
    """A whole network measured end to end: its name, architecture (as a dict) and timing."""

    name: str
    arch: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> CalibrationModel:
        if not isinstance(data, dict):
            raise EfnasError("calibration model must be an object")
        try:
            model = cls(
                name=str(data["name"]),
                arch=dict(data["arch"]),
                median_ms=float(data["median_ms"]),
                p10_ms=float(data["p10_ms"]),
                p90_ms=float(data["p90_ms"]),
                runs=int(data["runs"]),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise EfnasError(f"calibration model needs name, arch, median_ms, p10_ms, p90_ms and runs ({exc})") from None
        # The fit divides by these times: zero, negative or non-finite ones cannot be fitted on.
        if not all(math.isfinite(v) and v > 0 for v in (model.median_ms, model.p10_ms, model.p90_ms)):
            raise EfnasError(
                f"calibration model '{model.name}' needs positive finite times, got median_ms {model.median_ms}, "
                f"p10_ms {model.p10_ms}, p90_ms {model.p90_ms}"
            )
        return model


@dataclass(frozen=True)
class Calibration:
    """``overhead_ms`` plus one non-negative ``scales[category]`` per category."""

    overhead_ms: float
    scales: dict[str, float]
    models: tuple[CalibrationModel, ...] = ()
    fit_mape: float = 0.0
    form: str = "per_category"  # or "shared": one scale for all categories
    loo_mape: float | None = None  # leave-one-out error: each network predicted by a fit on the others

    @property
    def selection_mape(self) -> float:
        """The error to compare calibrations by: leave-one-out when known, else the fit's."""
        return self.fit_mape if self.loo_mape is None else self.loo_mape

    def apply(self, sums: dict[str, float]) -> float:
        return self.overhead_ms + sum(self.scales[c] * sums.get(c, 0.0) for c in CATEGORIES)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "non-negative least squares on relative error",
            "form": self.form,
            "overhead_ms": round(self.overhead_ms, 6),
            "scales": {c: round(self.scales[c], 6) for c in CATEGORIES},
            "fit_mape_percent": round(self.fit_mape, 4),
            "loo_mape_percent": None if self.loo_mape is None else round(self.loo_mape, 4),
            "models": [model.to_dict() for model in self.models],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict):
            raise EfnasError("meta 'calibration' must be an object")
        overhead = data.get("overhead_ms")
        if not _non_negative(overhead):
            raise EfnasError(f"calibration overhead_ms must be a non-negative number, got {overhead!r}")
        scales = data.get("scales")
        if not isinstance(scales, dict) or set(scales) != set(CATEGORIES):
            raise EfnasError(f"calibration scales must give exactly {', '.join(CATEGORIES)}")
        for name, value in scales.items():
            if not _non_negative(value):
                raise EfnasError(f"calibration scale '{name}' must be a non-negative number, got {value!r}")
        for name in ("fit_mape_percent", "loo_mape_percent"):
            if data.get(name) is not None and not _non_negative(data[name]):
                raise EfnasError(f"calibration {name} must be a non-negative number, got {data[name]!r}")
        models = data.get("models", [])
        if not isinstance(models, list):
            raise EfnasError("calibration models must be a list")
        return cls(
            overhead_ms=float(overhead),
            scales={name: float(value) for name, value in scales.items()},
            models=tuple(CalibrationModel.from_dict(model) for model in models),
            fit_mape=float(data.get("fit_mape_percent", 0.0)),
            form="shared" if data.get("form") == "shared" else "per_category",
            loo_mape=None if data.get("loo_mape_percent") is None else float(data["loo_mape_percent"]),
        )


def _non_negative(value: Any) -> bool:
    """A finite number >= 0 (JSON allows NaN and Infinity, and Python reads them)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _nnls_fit(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import nnls

    # Relative error: a 3 ms network counts as much as a 200 ms one.
    coefficients, _ = nnls(design / y[:, None], np.ones(len(y)))
    return coefficients


def _loo_mape(design: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out mean absolute percentage error: each network predicted by a fit on the others."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coefficients = _nnls_fit(design[keep], y[keep])
        errors.append(abs(design[i] @ coefficients - y[i]) / y[i])
    return float(np.mean(errors) * 100)


def fit_calibration(
    sums: Sequence[dict[str, float]],
    measured_ms: Sequence[float],
    models: Sequence[CalibrationModel] = (),
) -> Calibration:
    """Fit overhead and scales on whole networks: ``sums[i]`` are the category sums of network i,
    ``measured_ms[i]`` its end-to-end latency.

    One scale per category needs at least :data:`PER_CATEGORY_MIN` networks (twice its number of
    parameters); with fewer, all categories share one scale (overhead + scale x sum). With enough
    networks both forms are fitted and the one with the lower leave-one-out error (each network
    predicted by a fit on the others) is kept: on noisy timings six parameters fit the noise
    (measured: a recalibration on a busy machine gave scales of 0 and 8.6% left out, where one
    shared scale does better). The leave-one-out error is recorded as an honest estimate of the
    error on networks the fit has not seen.
    """
    if len(sums) != len(measured_ms) or len(sums) < 2:
        raise EfnasError(f"calibration needs at least 2 measured networks, got {len(sums)}")
    y = np.asarray(measured_ms, dtype=float)
    raw = np.array([[row.get(c, 0.0) for c in CATEGORIES] for row in sums])
    forms = ("per_category", "shared") if len(y) >= PER_CATEGORY_MIN else ("shared",)
    fits = [_fit_form(form, raw, y, models) for form in forms]
    return min(fits, key=lambda fit: fit.selection_mape)


def _fit_form(form: str, raw: np.ndarray, y: np.ndarray, models: Sequence[CalibrationModel]) -> Calibration:
    columns = raw if form == "per_category" else raw.sum(axis=1, keepdims=True)
    design = np.concatenate([np.ones((len(y), 1)), columns], axis=1)
    coefficients = _nnls_fit(design, y)
    overhead, *scales = coefficients
    if form == "shared":
        scales = scales * len(CATEGORIES)
    return Calibration(
        overhead_ms=float(overhead),
        scales=dict(zip(CATEGORIES, map(float, scales))),
        models=tuple(models),
        fit_mape=float(np.mean(np.abs(design @ coefficients - y) / y) * 100),
        form=form,
        loo_mape=_loo_mape(design, y) if len(y) >= 3 else None,
    )
