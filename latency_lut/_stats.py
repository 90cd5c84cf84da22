"""How good a latency predictor is: the statistics ``lut check`` and the fidelity benchmark report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PredictionStats", "linear_fit", "prediction_stats"]


@dataclass(frozen=True)
class PredictionStats:
    """Predicted vs measured over ``n`` networks; errors in percent of the measured latency."""

    n: int
    within_5: float  # share of networks with |error| <= 5 %, in percent
    within_10: float
    mape: float  # mean absolute percentage error
    worst: float  # largest |error|
    bias: float  # mean signed error
    kendall_tau: float  # rank agreement of predicted and measured

    def to_dict(self) -> dict[str, float]:
        return {name: round(value, 4) if isinstance(value, float) else value for name, value in asdict(self).items()}


def prediction_stats(predicted: Sequence[float], measured: Sequence[float]) -> PredictionStats:
    from scipy.stats import kendalltau

    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if len(p) != len(m) or len(p) < 2:
        raise ValueError("prediction_stats needs two equally long sequences of at least 2 values")
    error = (p - m) / m * 100
    tau = kendalltau(p, m).statistic
    return PredictionStats(
        n=len(p),
        within_5=float(np.mean(np.abs(error) <= 5) * 100),
        within_10=float(np.mean(np.abs(error) <= 10) * 100),
        mape=float(np.mean(np.abs(error))),
        worst=float(np.max(np.abs(error))),
        bias=float(np.mean(error)),
        kendall_tau=float(tau),
    )


def linear_fit(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``(intercept, slope)`` of y ~ intercept + slope * x by least squares on relative error,
    the same objective the table's calibration uses."""
    xs = np.asarray(x, dtype=float)
    ys = np.asarray(y, dtype=float)
    design = np.stack([np.ones_like(xs), xs], axis=1) / ys[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(design, np.ones_like(ys), rcond=None)
    return float(intercept), float(slope)
