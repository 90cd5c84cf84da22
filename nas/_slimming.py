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


def _edit(space: SearchSpace, spec: ArchSpec, **changes: Any) -> ArchSpec | None:
    """:meth:`SearchSpace.edit`, or None where the edit leaves the space (no such action)."""
    try:
        return space.edit(spec, **changes)
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
        candidate = _edit(space, spec, stage=s, depth=depth - 1, num_meta3d=meta3d)
        if candidate is not None:
            kind = " (Meta3D)" if s == last and spec.num_meta3d == depth else ""
            actions.append(Action(f"drop a block{kind} of stage {s + 1} ({depth} -> {depth - 1})", candidate, s))
        width = _neighbour(stage.widths, spec.widths[s], -1)
        if width is not None and (candidate := _edit(space, spec, stage=s, width=width)) is not None:
            actions.append(Action(f"narrow stage {s + 1} to {width}", candidate, s))
        ratio = _neighbour(stage.mlp_ratios, spec.mlp_ratios[s], -1)
        if ratio is not None and (candidate := _edit(space, spec, stage=s, mlp_ratio=ratio)) is not None:
            actions.append(Action(f"lower the MLP ratio of stage {s + 1} to {ratio}", candidate, s))
    candidate = _edit(space, spec, stage=last, num_meta3d=spec.num_meta3d - 1)
    if candidate is not None:
        actions.append(Action(f"turn a Meta3D block into Meta4D ({spec.num_meta3d} -> {spec.num_meta3d - 1} Meta3D)", candidate, last))
    return actions


def grow_actions(space: SearchSpace, spec: ArchSpec) -> list[Action]:
    """Every single-step growth of ``spec`` that stays in ``space`` (the inverses of :func:`slim_actions`)."""
    actions: list[Action] = []
    last = space.num_stages - 1
    for s, stage in enumerate(space.stages):
        depth = spec.depths[s]
        candidate = _edit(space, spec, stage=s, depth=depth + 1)
        if candidate is not None:
            kind = " (Meta4D)" if s == last else ""
            actions.append(Action(f"add a block{kind} to stage {s + 1} ({depth} -> {depth + 1})", candidate, s))
        if s == last and (candidate := _edit(space, spec, stage=s, depth=depth + 1, num_meta3d=spec.num_meta3d + 1)) is not None:
            actions.append(Action(f"add a block (Meta3D) to stage {s + 1} ({depth} -> {depth + 1})", candidate, s))
        width = _neighbour(stage.widths, spec.widths[s], +1)
        if width is not None and (candidate := _edit(space, spec, stage=s, width=width)) is not None:
            actions.append(Action(f"widen stage {s + 1} to {width}", candidate, s))
        ratio = _neighbour(stage.mlp_ratios, spec.mlp_ratios[s], +1)
        if ratio is not None and (candidate := _edit(space, spec, stage=s, mlp_ratio=ratio)) is not None:
            actions.append(Action(f"raise the MLP ratio of stage {s + 1} to {ratio}", candidate, s))
    candidate = _edit(space, spec, stage=last, num_meta3d=spec.num_meta3d + 1)
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
        combined = _edit(space, combined, stage=s, width=edited.widths[s], depth=edited.depths[s], mlp_ratio=edited.mlp_ratios[s],
                         num_meta3d=edited.num_meta3d if s == last else None)
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
    run = _Run(space, latency, limits, scores, on_step)
    current = space.largest()
    costs = latency(current)
    accuracy = scores([(current, {"phase": "start", "step": 0, "action": "largest architecture"})])[current]
    path = [run.record(SlimmingStep("start", 0, "largest architecture", current, accuracy, costs, 1))]
    path += run.slim(path[-1])
    if run.violated(path[-1].latency_ms):
        return path
    return path + run.grow(path[-1])


Candidates = list[tuple[Action, dict[str, float]]]


@dataclass(frozen=True)
class _Run:
    """What every step of one slimming needs."""

    space: SearchSpace
    latency: Latency
    limits: dict[str, float]
    scores: Scores
    on_step: Callable[[SlimmingStep], None]

    def violated(self, costs: dict[str, float]) -> list[str]:
        return [name for name, limit in self.limits.items() if costs[name] > limit]

    def relative(self, before: dict[str, float], after: dict[str, float], names: Sequence[str]) -> float:
        return sum((before[n] - after[n]) / self.limits[n] for n in names)

    def record(self, step: SlimmingStep) -> SlimmingStep:
        self.on_step(step)
        return step

    def evaluate(self, actions: list[Action], keep: Callable[[dict[str, float]], bool], phase: str,
                 step: int) -> tuple[Candidates, dict[ArchSpec, float]]:
        """The actions whose latency ``keep`` accepts, with their latencies, and their scores."""
        priced = [(a, c) for a in actions if keep(c := self.latency(a.spec))]
        if not priced:
            return [], {}
        return priced, self.scores([(a.spec, {"phase": phase, "step": step, "action": a.description}) for a, _ in priced])

    def slim(self, last: SlimmingStep) -> list[SlimmingStep]:
        steps: list[SlimmingStep] = []
        step = 0
        while names := self.violated(last.latency_ms):
            step += 1
            actions, got = self.evaluate(
                slim_actions(self.space, last.spec), lambda after: self.relative(last.latency_ms, after, names) > 0, "slim", step
            )
            if not actions:
                break
            chosen = self.slim_choice(last, names, actions, got)
            combined = combine(self.space, last.spec, [a for a, _ in chosen]) if len(chosen) > 1 else None
            if combined is not None:
                description = " + ".join(a.description for a, _ in chosen)
                costs = self.latency(combined)
                accuracy = self.scores([(combined, {"phase": "slim", "step": step, "action": description})])[combined]
                last = SlimmingStep("slim", step, description, combined, accuracy, costs, len(actions) + 1)
            else:
                action, after = chosen[0]
                last = SlimmingStep("slim", step, action.description, action.spec, got[action.spec], after, len(actions))
            steps.append(self.record(last))
        return steps

    def slim_choice(self, last: SlimmingStep, names: list[str], actions: Candidates, got: dict[ArchSpec, float]) -> Candidates:
        """The best action (least accuracy lost per latency saved), plus next-best actions of other
        stages from the better half of the ranking while their summed saving stays within the excess."""
        costs = last.latency_ms

        def rank(item: tuple[int, tuple[Action, dict[str, float]]]) -> tuple[float, float, int]:
            index, (action, after) = item
            saved = self.relative(costs, after, names)
            return ((last.accuracy - got[action.spec]) / saved, -saved, index)

        ranked = [item[1] for item in sorted(enumerate(actions), key=rank)]
        chosen = [ranked[0]]
        excess = sum((costs[n] - self.limits[n]) / self.limits[n] for n in names)
        saved = self.relative(costs, ranked[0][1], names)
        for action, after in ranked[1 : len(ranked) // 2]:
            more = self.relative(costs, after, names)
            if action.stage not in {a.stage for a, _ in chosen} and saved + more <= excess:
                chosen.append((action, after))
                saved += more
        return chosen

    def grow(self, last: SlimmingStep) -> list[SlimmingStep]:
        steps: list[SlimmingStep] = []
        step = 0
        while True:
            step += 1
            actions, got = self.evaluate(
                grow_actions(self.space, last.spec), lambda after: not self.violated(after), "grow", step
            )
            better = [(i, a, c) for i, (a, c) in enumerate(actions) if got[a.spec] > last.accuracy]
            if not better:
                break
            _, action, after = max(better, key=lambda item: self.grow_rank(last, got, *item))
            last = SlimmingStep("grow", step, action.description, action.spec, got[action.spec], after, len(actions))
            steps.append(self.record(last))
        return steps

    def grow_rank(self, last: SlimmingStep, got: dict[ArchSpec, float], index: int, action: Action,
                  after: dict[str, float]) -> tuple[float, float, int]:
        """Most accuracy gained per latency spent, then the larger gain, then the earlier action."""
        gained = got[action.spec] - last.accuracy
        spent = -self.relative(last.latency_ms, after, list(self.limits))
        return (gained / spent if spent > 0 else math.inf, gained, -index)
