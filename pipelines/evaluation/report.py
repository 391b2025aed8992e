"""reports/results.md: the systems x tasks table, what it says about the paper's claims, and the registry gate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

# (task, metric, column title, higher is better)
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("attributes", "mean_accuracy", "Attr. acc", True),
    ("attributes", "mean_balanced_accuracy", "Attr. bal. acc", True),
    ("attributes", "macro_f1", "Attr. macro-F1", True),
    ("attributes", "rule_violation_rate", "Rule viol. ↓", False),
    ("age_gender_race", "age_mae", "Age MAE ↓", False),
    ("age_gender_race", "age_group_accuracy", "Age-group acc", True),
    ("age_gender_race", "gender_accuracy", "Gender acc", True),
    ("age_gender_race", "race_accuracy", "Race acc", True),
    ("age_gender_race", "race_macro_f1", "Race macro-F1", True),
    ("expression", "war", "Expr. WAR", True),
    ("expression", "uar", "Expr. UAR", True),
)
LOWER_IS_BETTER = {f"{t}.{m}" for t, m, _, up in COLUMNS if not up}
SYSTEM_TITLES = {"majority": "Majority class (train split)", "specialist": "Specialist CNN (same faces, steps)",
                 "faceinsight": "FaceInsight (generated answers)",
                 "faceinsight_head": "FaceInsight (co-occurrence head)",
                 "faceinsight_tuned": "FaceInsight fine-tuned on the task (generated answers)",
                 "faceinsight_tuned_head": "FaceInsight fine-tuned on the task (co-occurrence head)"}
TUNED = ("faceinsight_tuned", "faceinsight_tuned_head")  # the fine-tuned setting's own table
HF_PREFIX = "hf_"  # evaluate.hf_models: one row per Hugging Face MLLM asked by path
VARIANT_PREFIX = "variant_"  # params.yaml variants: one row per baseline / ablation (train_variant@<name>)
# the headline number per task that the claims compare systems on (fine-tuning, variants)
GATED = ("attributes.mean_balanced_accuracy", "age_gender_race.gender_accuracy", "expression.uar")


def system_title(system: str, evals: dict[str, dict[str, Any]] | None = None) -> str:
    if system.startswith(HF_PREFIX):
        return f"Hugging Face MLLM `{system[len(HF_PREFIX):]}` (image only, same prompts)"
    if system.startswith(VARIANT_PREFIX):
        label = next((e["systems"][system].get("label") for e in (evals or {}).values()
                      if system in e.get("systems", {})), None) or system[len(VARIANT_PREFIX):]
        return f"{label} (co-occurrence head)" if system.endswith("_head") else label
    return SYSTEM_TITLES[system]


def system_order(evals: dict[str, dict[str, Any]]) -> list[str]:
    """The known systems in table order, the variants by name, then the Hugging Face ones by name."""
    present = {s for e in evals.values() for s in e.get("systems", {})}
    variants = sorted(s for s in present if s.startswith(VARIANT_PREFIX))  # by name, each head after its model
    known = [s for s in SYSTEM_TITLES if s in present]
    at = known.index("faceinsight_head") + 1 if "faceinsight_head" in known else len(known)
    return known[:at] + variants + known[at:] + sorted(s for s in present if s.startswith(HF_PREFIX))


@dataclass(frozen=True)
class ReportConfig:
    """params.yaml: report."""

    gate: dict[str, float] = field(default_factory=dict)  # "task.metric" -> the least FaceInsight must reach
    beat_majority: bool = True

    def __post_init__(self) -> None:
        known = {f"{t}.{m}" for t, m, _, _ in COLUMNS}
        unknown = sorted(set(self.gate) - known)
        if unknown:
            raise ValueError(f"report.gate: unknown metric(s) {unknown}; known: {sorted(known)}")


def value(evals: dict[str, dict[str, Any]], system: str, key: str) -> float | None:
    task, metric = key.split(".", 1)
    return evals.get(task, {}).get("systems", {}).get(system, {}).get("summary", {}).get(metric)


def better(key: str, a: float, b: float) -> bool:
    """a is at least as good as b on metric `key`."""
    return a <= b if key in LOWER_IS_BETTER else a >= b


def gate(evals: dict[str, dict[str, Any]], cfg: ReportConfig, champion: dict[str, float] | None
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
    if champion:
        keys = [k for k in sorted(cfg.gate) if k in champion and value(evals, "faceinsight", k) is not None]
        ours = {k: value(evals, "faceinsight", k) for k in keys}
        if keys and (not all(better(k, ours[k], champion[k]) for k in keys) or ours == {k: champion[k] for k in keys}):
            reasons.append("does not beat the current champion on the gated numbers ("
                           + ", ".join(f"{k}: {ours[k]:.3f} vs {champion[k]:.3f}" for k in keys) + ")")
    return not reasons, reasons


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "—"
    return f"{v:.2f}" if key.endswith("mae") else f"{v:.3f}"


def pipeline_state() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": "yes" if git("status", "--porcelain") else "no"}


def claims(evals: dict[str, dict[str, Any]]) -> list[str]:
    """One honest sentence per claim of the paper this table can speak to."""
    out = []
    fi, base = "faceinsight", "majority"
    bal, bal0 = value(evals, fi, "attributes.mean_balanced_accuracy"), value(evals, base,
                                                                            "attributes.mean_balanced_accuracy")
    if bal is not None and bal0 is not None:
        verdict = "beats" if bal > bal0 + 0.01 else "does not beat"
        out.append(f"**FaceInsight perceives facial attributes better than guessing.** Here it {verdict} the majority "
                   f"class on balanced accuracy ({bal:.3f} vs {bal0:.3f}); plain accuracy favours the majority class "
                   "because most attributes are rare, so balanced accuracy is the number to read.")
    head = value(evals, "faceinsight_head", "attributes.mean_balanced_accuracy")
    if head is not None and bal is not None:
        out.append(f"The attribute head (co-occurrence GCN) reaches {head:.3f} balanced accuracy against {bal:.3f} for "
                   "the generated answers of the same model.")
    viol = value(evals, fi, "attributes.rule_violation_rate")
    if viol is not None:
        ablated = value(evals, f"{VARIANT_PREFIX}no_constraints", "attributes.rule_violation_rate")
        why = ("The no-constraint ablation measures whether the constraint loss is what keeps this low."
               if ablated is None else
               f"Without the constraint loss the rate is {ablated:.1%}: "
               + ("the constraint loss lowers it, as the paper says." if ablated > viol + 0.005 else
                  "the constraint loss does not lower it here." if ablated >= viol - 0.005 else
                  "the model without the constraint loss is more consistent here, against the paper."))
        out.append(f"**Knowledge keeps answers consistent.** {viol:.1%} of test faces get a set of 40 generated "
                   f"answers that breaks a mined rule. {why}")
    for task, key, name in (("age_gender_race", "gender_accuracy", "gender"), ("expression", "uar", "expression UAR")):
        a, b = value(evals, fi, f"{task}.{key}"), value(evals, base, f"{task}.{key}")
        if a is not None and b is not None:
            out.append(f"{name}: FaceInsight {a:.3f}, majority class {b:.3f} — "
                       f"{'above' if a > b + 0.01 else 'no better than'} the baseline.")
    moved = [(key, value(evals, fi, key), value(evals, "faceinsight_tuned", key)) for key in GATED]
    moved = [(k, a, b) for k, a, b in moved if a is not None and b is not None]
    if moved:
        out.append("**Fine-tuning on the task helps.** Task-specific fine-tuning moves " + "; ".join(
            f"{k} from {a:.3f} to {b:.3f}" for k, a, b in moved) + (
            " — the direction the paper reports." if all(b > a + 0.01 for _, a, b in moved) else
            " — not the uniform gain the paper reports." if any(b < a - 0.01 for _, a, b in moved) else
            " — within ±0.01 on some tasks, so no clear gain here."))
    spec = value(evals, "specialist", "attributes.mean_balanced_accuracy")
    if spec is not None and bal is not None:
        gap = bal - spec
        out.append(f"**An MLLM against a specialist.** The specialist CNN, trained on the same faces for the same "
                   f"number of steps, reaches {spec:.3f} attribute balanced accuracy against FaceInsight's {bal:.3f} "
                   f"({'FaceInsight ahead' if gap > 0.01 else 'the specialist ahead' if gap < -0.01 else 'a tie'}). "
                   "The paper reports FaceInsight above specialist methods; at this model size and budget "
                   f"{'this agrees' if gap > 0.01 else 'this does not reproduce'}.")
    for variant, claim in (("no_map", "**The parsing map helps.**"),
                           ("no_cooccurrence", "**The co-occurrence module helps.**"),
                           ("general", "**A general MLLM trails FaceInsight.**")):
        sentence = against(evals, f"{VARIANT_PREFIX}{variant}")
        if sentence:
            out.append(f"{claim} {sentence}")
    return out


def against(evals: dict[str, dict[str, Any]], other: str) -> str | None:
    """FaceInsight against one variant on the gated numbers: the figures and which way they point."""
    pairs = [(k, value(evals, "faceinsight", k), value(evals, other, k)) for k in GATED]
    pairs = [(k, a, b) for k, a, b in pairs if a is not None and b is not None]
    if not pairs:
        return None
    ahead = [k for k, a, b in pairs if a > b + 0.01]
    behind = [k for k, a, b in pairs if a < b - 0.01]
    verdict = ("FaceInsight is ahead on every one: the paper's direction." if len(ahead) == len(pairs) else
               "FaceInsight is behind on " + ", ".join(behind) + ": this contradicts the paper here." if behind else
               "FaceInsight is ahead on " + ", ".join(ahead) + ", within ±0.01 on the rest." if ahead else
               "Within ±0.01 everywhere: no difference at this budget, so the claim is neither supported nor "
               "contradicted here.")
    unread = max((u for k, _, _ in pairs if (u := unread_share(evals, other, k)) is not None), default=0.0)
    caveat = (f" Up to {unread:.0%} of its answers could not be read (it did not learn to answer in the asked "
              "form), so the gap measures following the instruction as much as perceiving the face."
              if unread >= 0.5 else "")
    return (f"FaceInsight against {system_title(other, evals)}: "
            + "; ".join(f"{k} {a:.3f} vs {b:.3f}" for k, a, b in pairs) + f". {verdict}{caveat}")


# the question whose answers a gated number is read from (attributes: all 40)
UNREAD_TARGET = {"attributes.mean_balanced_accuracy": None, "age_gender_race.gender_accuracy": "gender",
                 "expression.uar": "expression"}


def unread_share(evals: dict[str, dict[str, Any]], system: str, key: str) -> float | None:
    """The share of a system's answers behind metric `key` that could not be read, where evaluate kept it."""
    task = key.split(".", 1)[0]
    metrics = evals.get(task, {}).get("systems", {}).get(system, {}).get("metrics")
    if not metrics or key not in UNREAD_TARGET:
        return None
    target = UNREAD_TARGET[key]
    part = metrics if target is None else metrics.get(target, {})
    asked = part.get("faces", 0) * (40 if target is None else 1)
    return part["unread"] / asked if asked and "unread" in part else None


def results_markdown(evals: dict[str, dict[str, Any]], corpus: dict[str, Any], seed: int,
                     registry: dict[str, Any] | None, verdict: tuple[bool, list[str]], alias_moved: bool) -> str:
    order = system_order(evals)
    systems = [s for s in order if s not in TUNED]
    tuned = [s for s in order if s in TUNED]
    keys = [f"{t}.{m}" for t, m, _, _ in COLUMNS]
    lines = ["# FaceInsight — results", ""]
    state = pipeline_state()
    faces = ", ".join(f"{t}: {e['faces']} {e['split']} faces" for t, e in evals.items())
    lines += [f"Pipeline state: git `{state['commit']}` (uncommitted changes: {state['dirty']}); seed {seed}; "
              f"evaluated on {faces}; maps made by the face parser (sources: "
              f"{', '.join(sorted({s for e in evals.values() for s in e.get('map_sources', [])}))})."]
    if corpus:
        lines += ["", "Corpus: " + ", ".join(f"{k}: {v}" for k, v in corpus.items()) + "."]
    if registry:
        lines += ["", f"Model: `{registry.get('version_uri')}` (run `{registry.get('run_id')}`)."]
    header = ["| System | " + " | ".join(title for _, _, title, _ in COLUMNS) + " |",
              "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]

    def rows(names: list[str]) -> list[str]:
        return [f"| {system_title(s, evals)} | " + " | ".join(_fmt(value(evals, s, k), k) for k in keys) + " |"
                for s in names]

    lines += ["", "## Training-free setting (the multi-task model as `finetune` leaves it)", "", *header,
              *rows(systems)]
    if tuned:
        lines += ["", "## Fine-tuned setting (`finetune_task@<task>`: a further LoRA pass on the task's own train "
                  "split; each task's columns come from its own fine-tuned model)", "", *header,
                  *rows([s for s in ("majority", "specialist") if s in systems] + tuned)]
    lines += ["", "↓: lower is better. Unreadable answers count as wrong (their numbers are in reports/eval/). "
              "The variants (params.yaml `variants`) are trained as FaceInsight is, same passes, steps and data, "
              "with the one change their name says.",
              "", "## What this says about the paper's claims", ""]
    lines += [f"- {c}" for c in claims(evals)]
    passed, reasons = verdict
    lines += ["", "## Registry gate", ""]
    if passed:
        lines.append(f"This version {'is now' if alias_moved else 'would be'} `champion`: it clears every threshold "
                     "in params.yaml (report.gate), beats the majority class on each, and beats the previous champion.")
    else:
        lines.append("`champion` was not moved to this version:")
        lines += [f"- {r}" for r in reasons]
    return "\n".join(lines) + "\n"
