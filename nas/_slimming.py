"""Latency-driven slimming, after EfficientFormer: shrink the largest network step by step, always
taking the action that loses the least accuracy per millisecond saved, until it is under budget;
then spend what budget remains by growing back, always taking the action that gains the most
accuracy per millisecond spent.

Far above the budget, one action per step would cost a whole round of candidate evaluations for a
small saving (reaching the tiny space's L1 budget from its largest network took 13 rounds, ~160
evaluations). So a slimming step also applies the next-best actions of *other* stages, from the
better half of the ranking, as long as their summed saving stays within the remaining excess: the
combination is evaluated once more and taken. Close to the budget this falls back to single
actions, so the step that crosses the budget is as fine-grained as in the paper.

The algorithm only sees architectures, latencies and a ``scores`` callback that returns the
accuracy of a batch of candidates (the search turns each evaluated candidate into a trial and
reuses stored scores, which is what makes a rerun replay its decisions without evaluating again).
Every step is deterministic: ties go to the larger saving, then to the earlier action in the fixed
order of :func:`slim_actions` / :func:`grow_actions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from supernet.errors import EfnasError
from supernet.space import ArchSpec, SearchSpace

__all__ = ["Action", "SlimmingStep", "grow_actions", "slim_actions", "slimming"]


@dataclass(frozen=True)
class Action:
    """One edit of an architecture, e.g. ``narrow stage 3 to 48``."""

    description: str
    spec: ArchSpec
    stage: int  # the stage it edits (the Meta3D count belongs to the last stage)


@dataclass(frozen=True)
class SlimmingStep:
    """A decision of the slimming: which action was taken, and where it led."""

    phase: str  # "start", "slim" or "grow"
    step: int
    action: str
    spec: ArchSpec
    accuracy: float
    latency_ms: dict[str, float]
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "step": self.step,
            "action": self.action,
            "arch": self.spec.to_dict(),
            "label": self.spec.label(),
            "accuracy": self.accuracy,
            "latency_ms": self.latency_ms,
            "candidates": self.candidates,
        }


def _with(space: SearchSpace, spec: ArchSpec, *, stage: int, width: int | None = None, depth: int | None = None,
          ratio: int | None = None, meta3d: int | None = None) -> ArchSpec | None:
    """``spec`` with one stage (and the Meta3D count) changed, or None if that leaves the space."""
    widths, depths, ratios = list(spec.widths), list(spec.depths), list(spec.mlp_ratios)
    if width is not None:
        widths[stage] = width
    if depth is not None:
        depths[stage] = depth
    if ratio is not None:
        ratios[stage] = ratio
    try:
        return space.spec(widths, depths, spec.num_meta3d if meta3d is None else meta3d, ratios)
    except EfnasError:
        return None


def _neighbour(choices: Sequence[int], value: int, step: int) -> int | None:
    index = list(choices).index(value) + step
    return choices[index] if 0 <= index < len(choices) else None


def slim_actions(space: SearchSpace, spec: ArchSpec) -> list[Action]:
    """Every single-step shrink of ``spec`` that stays in ``space``.

    Per stage: drop its last block (in the last stage the last Meta4D block, or a Meta3D one when
    only Meta3D blocks are left: the Meta3D tail shrinks through its own action), narrow it to the
    next smaller width, lower its MLP ratio to the next smaller one; and turn the first Meta3D block
    into a Meta4D block.
    """
    actions: list[Action] = []
    last = space.num_stages - 1
    for s, stage in enumerate(space.stages):
        depth = spec.depths[s]
        meta3d = min(spec.num_meta3d, depth - 1) if s == last else None
        candidate = _with(space, spec, stage=s, depth=depth - 1, meta3d=meta3d)
        if candidate is not None:
            kind = " (Meta3D)" if s == last and spec.num_meta3d == depth else ""
            actions.append(Action(f"drop a block{kind} of stage {s + 1} ({depth} -> {depth - 1})", candidate, s))
        width = _neighbour(stage.widths, spec.widths[s], -1)
        if width is not None and (candidate := _with(space, spec, stage=s, width=width)) is not None:
            actions.append(Action(f"narrow stage {s + 1} to {width}", candidate, s))
        ratio = _neighbour(stage.mlp_ratios, spec.mlp_ratios[s], -1)
        if ratio is not None and (candidate := _with(space, spec, stage=s, ratio=ratio)) is not None:
            actions.append(Action(f"lower the MLP ratio of stage {s + 1} to {ratio}", candidate, s))
    candidate = _with(space, spec, stage=last, meta3d=spec.num_meta3d - 1)
    if candidate is not None:
        actions.append(Action(f"turn a Meta3D block into Meta4D ({spec.num_meta3d} -> {spec.num_meta3d - 1} Meta3D)", candidate, last))
    return actions


def grow_actions(space: SearchSpace, spec: ArchSpec) -> list[Action]:
    """Every single-step growth of ``spec`` that stays in ``space`` (the inverses of :func:`slim_actions`)."""
    actions: list[Action] = []
    last = space.num_stages - 1
    for s, stage in enumerate(space.stages):
        depth = spec.depths[s]
        candidate = _with(space, spec, stage=s, depth=depth + 1)
        if candidate is not None:
            kind = " (Meta4D)" if s == last else ""
            actions.append(Action(f"add a block{kind} to stage {s + 1} ({depth} -> {depth + 1})", candidate, s))
        if s == last and (candidate := _with(space, spec, stage=s, depth=depth + 1, meta3d=spec.num_meta3d + 1)) is not None:
            actions.append(Action(f"add a block (Meta3D) to stage {s + 1} ({depth} -> {depth + 1})", candidate, s))
        width = _neighbour(stage.widths, spec.widths[s], +1)
        if width is not None and (candidate := _with(space, spec, stage=s, width=width)) is not None:
            actions.append(Action(f"widen stage {s + 1} to {width}", candidate, s))
        ratio = _neighbour(stage.mlp_ratios, spec.mlp_ratios[s], +1)
        if ratio is not None and (candidate := _with(space, spec, stage=s, ratio=ratio)) is not None:
            actions.append(Action(f"raise the MLP ratio of stage {s + 1} to {ratio}", candidate, s))
    candidate = _with(space, spec, stage=last, meta3d=spec.num_meta3d + 1)
    if candidate is not None:
        actions.append(Action(f"turn a Meta4D block into Meta3D ({spec.num_meta3d} -> {spec.num_meta3d + 1} Meta3D)", candidate, last))
    return actions


def combine(space: SearchSpace, base: ArchSpec, actions: Sequence[Action]) -> ArchSpec | None:
    """``base`` with the edits of ``actions`` (one per stage) applied together, or None if that
    leaves the space."""
    last = space.num_stages - 1
    combined: ArchSpec | None = base
    for action in actions:
        s, edited = action.stage, action.spec
        combined = _with(space, combined, stage=s, width=edited.widths[s], depth=edited.depths[s], ratio=edited.mlp_ratios[s],
                         meta3d=edited.num_meta3d if s == last else None)
        if combined is None:
            return None
    return combined


Scores = Callable[[Sequence[tuple[ArchSpec, dict[str, Any]]]], dict[ArchSpec, float]]
Latency = Callable[[ArchSpec], dict[str, float]]


def slimming(
    space: SearchSpace,
    latency: Latency,
    limits: dict[str, float],
    scores: Scores,
    on_step: Callable[[SlimmingStep], None] = lambda step: None,
) -> list[SlimmingStep]:
    """Run the slimming from ``space.largest()`` and return its decisions.

    ``latency(spec)`` gives the predicted latency per table, ``limits`` the budget per table;
    ``scores([(spec, note), ...])`` the accuracy of each spec (``note`` says which phase, step and
    action proposed it, for the trial's record).
    Latency saved and spent is measured relative to each budget and summed over the tables (over the
    violated ones while slimming), so with one table it is proportional to milliseconds.
    """

    def violated(costs: dict[str, float]) -> list[str]:
        return [name for name, limit in limits.items() if costs[name] > limit]

    def relative(before: dict[str, float], after: dict[str, float], names: Sequence[str]) -> float:
        return sum((before[n] - after[n]) / limits[n] for n in names)

    current = space.largest()
    costs = latency(current)
    accuracy = scores([(current, {"phase": "start", "step": 0, "action": "largest architecture"})])[current]
    path = [SlimmingStep("start", 0, "largest architecture", current, accuracy, costs, 1)]
    on_step(path[-1])

    step = 0
    while names := violated(costs):
        step += 1
        actions = [(a, latency(a.spec)) for a in slim_actions(space, current)]
        actions = [(a, c) for a, c in actions if relative(costs, c, names) > 0]
        if not actions:
            break
        got = scores([(a.spec, {"phase": "slim", "step": step, "action": a.description}) for a, _ in actions])

        def slim_rank(item: tuple[int, tuple[Action, dict[str, float]]]) -> tuple[float, float, int]:
            index, (action, after) = item
            saved = relative(costs, after, names)
            return ((accuracy - got[action.spec]) / saved, -saved, index)

        ranked = [item[1] for item in sorted(enumerate(actions), key=slim_rank)]
        chosen = [ranked[0]]
        excess = sum((costs[n] - limits[n]) / limits[n] for n in names)
        saved = relative(costs, ranked[0][1], names)
        for action, after in ranked[1 : len(ranked) // 2]:
            more = relative(costs, after, names)
            if action.stage not in {a.stage for a, _ in chosen} and saved + more <= excess:
                chosen.append((action, after))
                saved += more
        combined = combine(space, current, [a for a, _ in chosen]) if len(chosen) > 1 else None
        if combined is not None:
            description = " + ".join(a.description for a, _ in chosen)
            costs = latency(combined)
            accuracy = scores([(combined, {"phase": "slim", "step": step, "action": description})])[combined]
            current = combined
        else:
            action, after = chosen[0]
            description = action.description
            current, costs, accuracy = action.spec, after, got[action.spec]
        path.append(SlimmingStep("slim", step, description, current, accuracy, costs, len(actions) + (combined is not None)))
        on_step(path[-1])

    if violated(costs):
        return path
    step = 0
    while True:
        step += 1
        actions = [(a, latency(a.spec)) for a in grow_actions(space, current)]
        actions = [(a, c) for a, c in actions if not violated(c)]
        if not actions:
            break
        got = scores([(a.spec, {"phase": "grow", "step": step, "action": a.description}) for a, _ in actions])
        better = [(i, a, c) for i, (a, c) in enumerate(actions) if got[a.spec] > accuracy]
        if not better:
            break

        def grow_rank(item: tuple[int, Action, dict[str, float]]) -> tuple[float, float, int]:
            index, action, after = item
            gained = got[action.spec] - accuracy
            spent = -relative(costs, after, list(limits))
            return (gained / spent if spent > 0 else math.inf, gained, -index)

        _, action, after = max(better, key=grow_rank)
        current, costs, accuracy = action.spec, after, got[action.spec]
        path.append(SlimmingStep("grow", step, action.description, current, accuracy, costs, len(actions)))
        on_step(path[-1])
    return path
