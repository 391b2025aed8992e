"""reports/results.md: the systems x tasks table, what it says about the paper's claims, and the registry gate."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.knowledge_modules import rules_tensor
from pipelines.evaluation import uncertainty
from pipelines.provenance import code_tags
from pipelines.training.variants import REFERENCE

# (task, metric, column title, higher is better)
COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("attributes", "mean_accuracy", "Attr. acc", True),
    ("attributes", "mean_balanced_accuracy", "Attr. bal. acc", True),
    ("attributes", "mean_balanced_accuracy_drawn", "Attr. bal. acc (drawn)", True),
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
                 "faceinsight_head": "FaceInsight (its heads: co-occurrence; gender, race, expression)",
                 "faceinsight_tuned": "FaceInsight fine-tuned on the task (generated answers)",
                 "faceinsight_tuned_head": "FaceInsight fine-tuned on the task (its heads)"}
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
        return f"{label} (its heads)" if system.endswith("_head") else label
    return SYSTEM_TITLES[system]


REFERENCE_SYSTEM = f"{VARIANT_PREFIX}{REFERENCE}"  # the variants' same-budget FaceInsight, as evaluate names it


def system_order(evals: dict[str, dict[str, Any]]) -> list[str]:
    """The known systems in table order, the variants by name (the same-budget reference first: the row they are
    judged against), then the Hugging Face ones by name."""
    present = {s for e in evals.values() for s in e.get("systems", {})}
    # by name, each head after its model
    variants = sorted((s for s in present if s.startswith(VARIANT_PREFIX)),
                      key=lambda s: (not s.startswith(REFERENCE_SYSTEM), s))
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


def interval(evals: dict[str, dict[str, Any]], system: str, key: str) -> dict[str, float] | None:
    """The 95% bootstrap interval evaluate stored beside a number, if any."""
    task, metric = key.split(".", 1)
    return evals.get(task, {}).get("systems", {}).get(system, {}).get("intervals", {}).get(metric)


def compare(evals: dict[str, dict[str, Any]], a: str, b: str, key: str):
    """(paired 95% interval of a - b over the same test faces, verdict on "a is better than b"), or None
    where either system's per-face predictions are missing."""
    task = key.split(".", 1)[0]
    e = evals.get(task, {})
    systems = e.get("systems", {})
    missing = any("predictions" not in systems.get(s, {}) for s in (a, b))
    if key not in uncertainty.METRICS or "truth" not in e or missing:
        return None
    arrays = uncertainty.as_arrays
    diff = uncertainty.difference_interval(key, arrays(systems[a]["predictions"]), arrays(systems[b]["predictions"]),
                                           arrays(e["truth"]))
    return diff, uncertainty.verdict(diff, key not in LOWER_IS_BETTER)


def judged(evals: dict[str, dict[str, Any]], a: str, b: str, key: str) -> str:
    """'0.812 vs 0.640, difference +0.172 [+0.140, +0.205]: supported' for the claim that a beats b on key."""
    return stated(evals, a, b, key, compare(evals, a, b, key))


def stated(evals: dict[str, dict[str, Any]], a: str, b: str, key: str, found) -> str:
    """judged's sentence from compare's result, where the caller has it already (the bootstrap is not run twice)."""
    va, vb = value(evals, a, key), value(evals, b, key)
    if va is None or vb is None:
        return f"{key}: not measured"
    if found is None:
        return f"{key} {va:.3f} vs {vb:.3f} (no per-face predictions: not judged)"
    diff, word = found
    return (f"{key} {va:.3f} vs {vb:.3f}, difference {diff.value:+.3f} [95% CI {diff.low:+.3f}, {diff.high:+.3f}]: "
            f"**{word}**")


def better(key: str, a: float, b: float) -> bool:
    """a is at least as good as b on metric `key`."""
    return a <= b if key in LOWER_IS_BETTER else a >= b


def _fmt(v: float | None, key: str, ci: dict[str, float] | None = None) -> str:
    if v is None:
        return "—"
    digits = 2 if key.endswith("mae") else 3
    text = f"{v:.{digits}f}"
    if ci and ci["high"] == ci["high"]:  # not NaN
        text += f" ±{(ci['high'] - ci['low']) / 2:.{digits}f}"
    return text


def pipeline_state() -> dict[str, str]:
    """The commit the report is written from, and whether the stage's inputs differ from it (dvc repro itself
    rewrites dvc.lock and the git-tracked metrics as it goes, so the whole tree is no measure)."""
    tags = code_tags()
    return {"commit": tags["git.commit"][:7],
            "dirty": {"true": "yes", "false": "no"}.get(tags.get("git.dirty", ""), "n/a")}


def trained_on(tags: dict[str, str]) -> str:
    """The registered model's run tags (pipelines/provenance.py) as a sentence: numbers differ between CPUs. A run
    from before these tags existed says only what it has."""
    if "git.commit" not in tags:
        return ""
    dirty = {"true": " (with uncommitted changes to its inputs)", "false": ""}.get(tags.get("git.dirty", ""), "")
    machine = (f" on {tags['host.cpu']} (bf16 instructions: {tags.get('host.cpu_bf16', '?')}; GPU: "
               f"{tags.get('host.gpu', '?')}), {tags.get('train.dtype', '?')}") if "host.cpu" in tags else ""
    return f" Trained from git `{tags['git.commit'][:7]}`{dirty}{machine}."


def claims(evals: dict[str, dict[str, Any]]) -> list[str]:
    """One sentence per claim of the paper this table can speak to, each judged by the paired 95% bootstrap
    interval of the difference over test faces: supported, contradicted, or not resolved at this sample size."""
    out = []
    fi, base = "faceinsight", "majority"
    bal_key = "attributes.mean_balanced_accuracy"
    bal = value(evals, fi, bal_key)
    if bal is not None and value(evals, base, bal_key) is not None:
        out.append("**FaceInsight perceives facial attributes better than guessing** (balanced accuracy against the "
                   f"majority class; plain accuracy favours the majority class because most attributes are rare): "
                   f"{judged(evals, fi, base, bal_key)}.")
    head = value(evals, "faceinsight_head", bal_key)
    if head is not None and bal is not None:
        out.append(f"The attribute head (co-occurrence GCN) against the generated answers of the same model: "
                   f"{judged(evals, 'faceinsight_head', fi, bal_key)}.")
    ref = ablation_reference(evals)
    viol = value(evals, ref, "attributes.rule_violation_rate")
    if viol is not None:
        whose = "" if ref == fi else f" ({system_title(ref, evals)})"
        out.append(f"**Knowledge keeps answers consistent.** {viol:.1%} of test faces get a set of 40 generated "
                   f"answers{whose} that breaks a mined rule. {consistency(evals, ref)}")
    for key in ("age_gender_race.gender_accuracy", "age_gender_race.age_mae", "expression.uar"):
        if value(evals, fi, key) is not None and value(evals, base, key) is not None:
            out.append(f"FaceInsight against the majority class: {judged(evals, fi, base, key)}.")
    if any(value(evals, "faceinsight_tuned", k) is not None for k in GATED):
        out.append("**Fine-tuning on the task helps** (the fine-tuned model against the training-free one): "
                   + "; ".join(judged(evals, "faceinsight_tuned", fi, k) for k in GATED
                               if value(evals, "faceinsight_tuned", k) is not None) + ".")
    if value(evals, "specialist", bal_key) is not None and bal is not None:
        out.append("**FaceInsight beats a specialist** (the specialist CNN, trained on the same faces for the same "
                   "number of optimiser steps): "
                   + "; ".join(judged(evals, fi, "specialist", k) for k in GATED
                               if value(evals, "specialist", k) is not None) + ".")
    for variant, claim in (("no_map", "**The parsing map helps.**"),
                           ("no_cooccurrence", "**The co-occurrence module helps.**"),
                           ("general", "**A general MLLM trails FaceInsight.**")):
        sentence = against(evals, f"{VARIANT_PREFIX}{variant}", ref)
        if sentence:
            out.append(f"{claim} {sentence}")
    return out


def consistency(evals: dict[str, dict[str, Any]], ref: str) -> str:
    """The no-constraint ablation against `ref` on the share of faces whose answers break a mined rule, judged as
    every claim is: the paired 95% interval of (rate without the loss) - (rate with it) over the same faces."""
    ablated_system, key = f"{VARIANT_PREFIX}no_constraints", "attributes.rule_violation_rate"
    ablated = value(evals, ablated_system, key)
    if ablated is None:
        return "The no-constraint ablation measures whether the constraint loss is what keeps this low."
    said = f"Without the constraint loss the rate is {ablated:.1%}"
    e = evals["attributes"]
    systems = e.get("systems", {})
    per_rule = systems.get(ref, {}).get("metrics", {}).get("rules", {}).get("per_rule")
    if not per_rule or "truth" not in e or any("predictions" not in systems.get(s, {}) for s in (ref, ablated_system)):
        return f"{said} (no per-face answers or rules to pair: not judged)."
    arrays = uncertainty.as_arrays
    diff = uncertainty.difference_interval(key, arrays(systems[ablated_system]["predictions"]),
                                           arrays(systems[ref]["predictions"]), arrays(e["truth"]),
                                           metric=uncertainty.violation_rate(rules_tensor(per_rule).numpy()))
    word = uncertainty.verdict(diff)  # the claim: without the loss more faces break a rule
    return (f"{said}, difference {diff.value:+.3f} [95% CI {diff.low:+.3f}, {diff.high:+.3f}]; that the constraint "
            f"loss lowers it: **{word}**.")


def ablation_reference(evals: dict[str, dict[str, Any]]) -> str:
    """The system the variants are judged against: FaceInsight retrained at their budget (the `reference` variant)
    where it was evaluated, else FaceInsight itself (the variants then trained at its budget)."""
    present = any(REFERENCE_SYSTEM in e.get("systems", {}) for e in evals.values())
    return REFERENCE_SYSTEM if present else "faceinsight"


def against(evals: dict[str, dict[str, Any]], other: str, ref: str = "faceinsight") -> str | None:
    """FaceInsight (or its same-budget reference `ref`) against one variant on the gated numbers: the figures and
    which way they point."""
    keys = [k for k in GATED if value(evals, ref, k) is not None and value(evals, other, k) is not None]
    if not keys:
        return None
    unread = max((u for k in keys if (u := unread_share(evals, other, k)) is not None), default=0.0)
    caveat = (f" Up to {unread:.0%} of its answers could not be read (it did not learn to answer in the asked "
              "form), so the gap measures following the instruction as much as perceiving the face."
              if unread >= 0.5 else "")
    return (f"{system_title(ref, evals) if ref != 'faceinsight' else 'FaceInsight'} against "
            f"{system_title(other, evals)}: " + "; ".join(judged(evals, ref, other, k) for k in keys) + f".{caveat}")


def below_majority(evals: dict[str, dict[str, Any]]) -> list[str]:
    """Each variant's and the fine-tuned model's gated numbers that do not beat the majority class (the paired interval
    of the difference does not exclude zero in their favour), with what their answers show of why."""
    out = []
    rows = [s for s in system_order(evals) if (s.startswith(VARIANT_PREFIX) or s in TUNED) and not s.endswith("_head")]
    for system in rows:
        for key in GATED:
            found = compare(evals, system, "majority", key)
            if found is None or found[1] == "supported":
                continue
            out.append(f"{system_title(system, evals)}: {stated(evals, system, 'majority', key, found)}. "
                       + why_not(evals, system, key))
    return out


def why_not(evals: dict[str, dict[str, Any]], system: str, key: str) -> str:
    """What a system's answers behind `key` show: how many went unread, or one answer for every face."""
    unread = unread_share(evals, system, key)
    if unread is not None and unread >= 0.05:
        return f"{unread:.0%} of its answers could not be read (counted wrong)."
    predictions = evals[key.split(".", 1)[0]]["systems"][system]["predictions"]
    target = UNREAD_TARGET.get(key)  # None: every attribute's answers
    columns = list(predictions.values()) if target is None else [predictions.get(target, [])]
    if columns and all(len(set(c)) == 1 for c in columns):
        return "It gives the same answer for every face."
    return "Its answers follow the face no better than the class shares do."


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
    lines += [f"Pipeline state: git `{state['commit']}` (uncommitted changes to the report's inputs: "
              f"{state['dirty']}); seed {seed}; "
              f"evaluated on {faces}; maps made by the face parser (sources: "
              f"{', '.join(sorted({s for e in evals.values() for s in e.get('map_sources', [])}))})."]
    if corpus:
        lines += ["", "Corpus: " + ", ".join(f"{k}: {v}" for k, v in corpus.items()) + "."]
    if registry:
        lines += ["", f"Model: `{registry.get('version_uri')}` (run `{registry.get('run_id')}`)."
                  + trained_on(registry.get("provenance", {}))]
    header = ["| System | " + " | ".join(title for _, _, title, _ in COLUMNS) + " |",
              "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |"]

    def rows(names: list[str]) -> list[str]:
        return [f"| {system_title(s, evals)} | " + " | ".join(_fmt(value(evals, s, k), k, interval(evals, s, k))
                                                          for k in keys) + " |"
                for s in names]

    lines += ["", "## Training-free setting (the multi-task model as `finetune` leaves it)", "", *header,
              *rows(systems)]
    if tuned:
        lines += ["", "## Fine-tuned setting (`finetune_task@<task>`: a further LoRA pass on the task's own train "
                  "split; each task's columns come from its own fine-tuned model)", "", *header,
                  *rows([s for s in ("majority", "specialist") if s in systems] + tuned)]
    lines += ["", "↓: lower is better. ±: half-width of the 95% bootstrap interval over the test faces "
              f"({uncertainty.RESAMPLES} seeded resamples); claims below compare systems by the paired interval of "
              "their difference (the same resampled faces for both). Unreadable answers count as wrong (their numbers "
              "are in reports/eval/). " + budget_note(evals),
              "", "## What this says about the paper's claims", ""]
    lines += [f"- {c}" for c in claims(evals)]
    below = below_majority(evals)
    lines += ["", "## Rows that do not beat the majority class", ""]
    lines += [f"- {b}" for b in below] if below else [
        "Every variant and the fine-tuned setting beat the majority class on each gated number."]
    passed, reasons = verdict
    lines += ["", "## Registry gate", ""]
    against = (registry or {}).get("against_champion")
    if passed:
        thresholds = "clears every threshold in params.yaml (report.gate) and beats the majority class on each"
        clears = f"This version {'is now' if alias_moved else 'would be'} `champion`: it {thresholds}"
        if against:
            how = "by point values" if against["unpaired"] else "by the paired 95% interval over the same test faces"
            lines.append(f"{clears}, and it beats the previous champion (version {against['version']}), {how}:")
            lines += [f"- {line}" for line in against["lines"]]
        elif (registry or {}).get("held_champion"):
            lines.append(f"This version holds `champion` already (it earned it when it was first judged) and still "
                         f"{thresholds}.")
        else:
            lines.append(f"{clears} (no other version holds `champion` to beat).")
    else:
        lines.append("`champion` was not moved to this version:")
        lines += [f"- {r}" for r in reasons]
    return "\n".join(lines) + "\n"


def budget_note(evals: dict[str, dict[str, Any]]) -> str:
    """How the variants were trained, as the table must say when their budget is not FaceInsight's."""
    ref = ablation_reference(evals)
    if ref == "faceinsight":
        return ("The variants (params.yaml `variants`) are trained as FaceInsight is, same passes, steps and data, "
                "with the one change their name says.")
    return (f"The variants (params.yaml `variants`) are trained as FaceInsight is, same passes and data, with the one "
            f"change their name says, at a smaller budget (params.yaml `ablation_budget`), beside FaceInsight "
            f"retrained at that budget (\"{system_title(ref, evals)}\"): the claims about the "
            "parsing map, the co-occurrence module, the constraint loss and the general MLLM compare each variant "
            "with that row, not with FaceInsight's full-budget numbers.")


def read_evals(folder: Path, tasks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """evaluate@<task>'s full results, one per task; a missing one names the stage that makes it."""
    out = {}
    for task in tasks:
        path = Path(folder) / f"{task}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; run `dvc repro evaluate@{task}`")
        out[task] = json.loads(path.read_text())
    return out


def corpus_summary(metrics_path: Path) -> dict[str, Any]:
    """Faces per dataset and split, and the record count, from build_corpus' metrics (empty if absent)."""
    if not Path(metrics_path).exists():
        return {}
    c = json.loads(Path(metrics_path).read_text())
    out: dict[str, Any] = {f"{dataset} {split}": n for dataset, splits in c.get("faces", {}).items()
                           for split, n in sorted(splits.items())}
    out["records"] = c.get("records_total")
    return out
