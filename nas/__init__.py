"""Hardware-aware search over EfficientFormer architectures.

The architecture spec and the search spaces live in :mod:`supernet` (the lowest layer, so that
:mod:`latency_lut` can use them too); they are re-exported here for users of the search API.
"""

from latency_lut import fastest_subnet
from supernet import ArchSpec, EfnasError, SearchSpace, build_model, load_arch, load_space

from nas.batch import Batch, BatchRow, load_batch, run_batch
from nas.budget import Budget, BudgetRequest, budget_requests, parse_budget, resolve_budgets
from nas.evaluator import EvalConfig, Evaluator
from nas.results import TrialRecord, best_feasible_trial, hypervolume, load_records, pareto_front
from nas.study import STRATEGIES, SearchConfig, SearchResult, load_evaluator, run_search
from nas.export import ExportConfig, ExportResult, export_subnet, load_export

__all__ = ["ArchSpec", "EfnasError", "SearchSpace", "build_model", "load_arch", "load_space"]
__all__ += [
    "STRATEGIES", "Batch", "BatchRow", "Budget", "BudgetRequest", "EvalConfig", "Evaluator", "SearchConfig",
    "SearchResult", "TrialRecord", "best_feasible_trial", "budget_requests", "fastest_subnet", "hypervolume",
    "load_batch", "load_evaluator", "load_records", "parse_budget", "pareto_front", "resolve_budgets", "run_batch", "run_search",
]
__all__ += ["ExportConfig", "ExportResult", "export_subnet", "load_export"]
