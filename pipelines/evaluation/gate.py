"""The registry gate's verdict: does the evaluated FaceInsight earn `champion`? Thresholds (params.yaml report.gate),
the majority class, and the current champion, judged as every other claim is: by the paired 95% interval of the
difference over the same test faces, where both versions' per-face answers are at hand; by point values (and the
report says so) where they are not."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from pipelines.evaluation.report import LOWER_IS_BETTER, ReportConfig, better, compare, stated, value

CHAMPION = "champion"  # the current champion's answers, as a system beside FaceInsight's


@dataclass(frozen=True)
class ChampionComparison:
    """FaceInsight against the current champion on each gated number."""

    version: str
    lines: list[str]  # one per gated number: both values, and the paired difference with its verdict where paired
    worse: list[str] = field(default_factory=list)  # gated numbers on which FaceInsight is worse
    ahead: list[str] = field(default_factory=list)  # ... and better
    unpaired: str = ""  # why the versions were compared by point values ("" where paired)

    @property
    def beaten(self) -> bool:
        """Paired: worse on none, and resolved better on at least one. By point values: as good on every one and
        better on at least one."""
        return not self.worse and bool(self.ahead)


def against_champion(evals: dict[str, dict[str, Any]], keys: list[str], version: str, numbers: dict[str, float],
                     answers: dict[str, dict[str, Any]] | None = None) -> ChampionComparison:
    """FaceInsight (`evals`) against the champion, whose gated `numbers` ("task.metric") its run holds and whose
    per-face `answers` per task (evaluate's logged artifact) it may hold. Paired only when every gated task's answers
    are there and cover the same faces (ids and image digests, in order) with the same labels."""
    keys = [k for k in keys if k in numbers and value(evals, "faceinsight", k) is not None]
    tasks = {k.split(".", 1)[0] for k in keys}
    why = unpaired_reason(evals, tasks, answers or {})
    if not why:
        joined = copy.copy(evals)
        for task in tasks:
            systems = dict(evals[task]["systems"])
            systems[CHAMPION] = {"predictions": answers[task]["predictions"],
                                 "summary": {k.split(".", 1)[1]: numbers[k] for k in keys if k.startswith(task + ".")}}
            joined[task] = evals[task] | {"systems": systems}
        found = {k: compare(joined, "faceinsight", CHAMPION, k) for k in keys}
        if all(found.values()):
            return ChampionComparison(version, [stated(joined, "faceinsight", CHAMPION, k, found[k]) for k in keys],
                                      worse=[k for k in keys if found[k][1] == "contradicted"],
                                      ahead=[k for k in keys if found[k][1] == "supported"])
        why = "a gated number has no per-face metric to pair"
    ours = {k: value(evals, "faceinsight", k) for k in keys}
    return ChampionComparison(version, [f"{k} {ours[k]:.3f} vs {numbers[k]:.3f}" for k in keys],
                              worse=[k for k in keys if not better(k, ours[k], numbers[k])],
                              ahead=[k for k in keys if better(k, ours[k], numbers[k]) and ours[k] != numbers[k]],
                              unpaired=why)


def unpaired_reason(evals: dict[str, dict[str, Any]], tasks: set[str], answers: dict[str, dict[str, Any]]) -> str:
    """Why FaceInsight's and the champion's answers cannot be paired face by face ("" where they can)."""
    for task in sorted(tasks):
        if task not in answers:
            return (f"the champion's run has no per-face answers for {task} that can be read (evaluated before "
                    "evaluate logged them, or its artifact store does not answer)")
        ours, theirs = evals[task], answers[task]
        if "face_keys" not in ours or "predictions" not in ours["systems"].get("faceinsight", {}):
            return f"this evaluation of {task} has no per-face answers to pair"
        if ours["face_keys"] != theirs.get("face_keys") or ours.get("truth") != theirs.get("truth"):
            return f"the champion was evaluated on other {task} faces (another test split or corpus)"
    return ""


def gate(evals: dict[str, dict[str, Any]], cfg: ReportConfig, champion: ChampionComparison | None = None
         ) -> tuple[bool, list[str]]:
    """Whether FaceInsight's numbers earn `champion`, and every reason they do not (empty when they do)."""
    reasons = []
    for key, least in sorted(cfg.gate.items()):
        got = value(evals, "faceinsight", key)
        if got is None:
            reasons.append(f"{key}: not measured")
            continue
        if not better(key, got, least):
            reasons.append(f"{key} = {got:.3f}, the gate asks {'at most' if key in LOWER_IS_BETTER else 'at least'} "
                           f"{least}")
        base = value(evals, "majority", key)
        if cfg.beat_majority and base is not None and (got == base or not better(key, got, base)):
            reasons.append(f"{key} = {got:.3f} does not beat the majority class ({base:.3f})")
    if champion and champion.lines and not champion.beaten:
        if champion.unpaired:
            reasons.append(f"does not beat the current champion (version {champion.version}) on the gated numbers "
                           f"({'; '.join(champion.lines)}; compared by point values: {champion.unpaired})")
        elif champion.worse:
            reasons.append(f"worse than the current champion (version {champion.version}) on "
                           f"{', '.join(champion.worse)} by the paired 95% interval over the same test faces: "
                           + "; ".join(champion.lines))
        else:
            reasons.append(f"not resolved better than the current champion (version {champion.version}) on any "
                           "gated number by the paired 95% interval over the same test faces: "
                           + "; ".join(champion.lines))
    return not reasons, reasons
