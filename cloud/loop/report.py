"""The loop run's report: ``report.md`` and its PNG plots, in one directory (the console serves the
images beside the markdown; :mod:`cloud.console.reports`)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from cloud.loop.feedback import NOT_AN_ANIMAL, FeedbackDataset

NOTHING = "nothing reported"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def confusion(clips: list[dict[str, Any]], classes: list[str], cols: list[str]) -> np.ndarray:
    """``[truth, reported]`` counts over held-back clips (rows: ``classes``, columns: ``cols``,
    which end with "nothing reported")."""
    m = np.zeros((len(classes), len(cols)), int)
    for c in clips:
        m[classes.index(c["truth"]), cols.index(c["reported"] or NOTHING)] += 1
    return m


def _plots(
    out: Path,
    codes: list[str],
    before: dict[str, Any],
    after: dict[str, Any],
    ds: FeedbackDataset,
    decision: dict[str, Any],
    classes: list[str],
) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    # per species precision / recall at threshold, before and after
    judged = sorted({r.reported for r in ds.rows if r.reported} | {r.label for r in ds.rows if r.label})
    shown = [c for c in codes if c in judged] or codes[:12]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.9 * len(shown) + 3), 3.6), sharey=True)
    x = np.arange(len(shown))
    for ax, key in zip(axes, ("precision", "recall")):
        for k, (name, fig_d) in enumerate((("production", before), ("candidate", after))):
            vals = [fig_d["species"][c][key] for c in shown]
            ax.bar(x + (k - 0.5) * 0.38, [v if v is not None else 0 for v in vals], 0.38, label=name)
        ax.set_xticks(x, shown, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{key} at the shipped threshold")
        ax.set_ylim(0, 1.05)
    axes[0].legend(fontsize=8)
    fig.suptitle("held-out soundscape windows, judged species (no bar: nothing reported)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "species_precision_recall.png", dpi=110)
    plt.close(fig)
    made.append(("species_precision_recall.png", "Per species precision and recall at threshold"))
    # confusions on the held-back clips
    if before["held_back"]:
        seen = {c["reported"] for d in (before, after) for c in d["held_back"] if c["reported"]}
        cols = [*[c for c in classes if c in seen], *sorted(seen - set(classes)), NOTHING]
        fig, axes = plt.subplots(1, 2, figsize=(2 * (0.55 * len(cols) + 2.5), 0.5 * len(classes) + 2.4))
        for ax, (name, fig_d) in zip(axes, (("production", before), ("candidate", after))):
            m = confusion(fig_d["held_back"], classes, cols)
            ax.imshow(m, cmap="Blues")
            for (i, j), v in np.ndenumerate(m):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
            ax.set_xticks(range(m.shape[1]), cols, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(m.shape[0]), classes, fontsize=7)
            ax.set_xlabel("reported at threshold (top)")
            ax.set_ylabel("verdict: what it was")
            ax.set_title(name, fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "confusions.png", dpi=110)
        plt.close(fig)
        made.append(("confusions.png", "Confusions on the held-back clips"))
    # verdict counts per species
    per = ds.counts
    names = list(per)
    verdicts = ("confirmed", "wrong_species", "not_an_animal")
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.2))
    bottom = np.zeros(len(names))
    for v in verdicts:
        vals = np.array([per[n].get(v, 0) for n in names], float)
        ax.bar(names, vals, bottom=bottom, label=v)
        bottom += vals
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("judged clips")
    ax.set_title("verdicts per species (what the clip was)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "verdicts.png", dpi=110)
    plt.close(fig)
    made.append(("verdicts.png", "Verdicts"))
    # the gate
    cand, prod = decision["candidate"], decision.get("production")
    fig, axes = plt.subplots(1, 2, figsize=(7, 3))
    labels = ["production", "candidate"] if prod else ["candidate"]
    aucs = ([prod["heldout_macro_roc_auc"]] if prod else []) + [cand["heldout_macro_roc_auc"]]
    rep = ([prod["flagged_repeated"]] if prod else []) + [cand["flagged_repeated"]]
    axes[0].bar(labels, aucs, color=["#888", "#2a7"][-len(labels) :])
    axes[0].set_ylim(max(0.0, min(aucs) - 0.1), 1.0)
    axes[0].set_title("held-out macro ROC-AUC", fontsize=9)
    axes[1].bar(labels, rep, color=["#888", "#2a7"][-len(labels) :])
    axes[1].set_title(f"flagged errors repeated (of {cand['flagged']})", fontsize=9)
    fig.suptitle("promoted" if decision["promoted"] else "refused", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "gate.png", dpi=110)
    plt.close(fig)
    made.append(("gate.png", "The gate"))
    return made


def write_report(
    out: Path,
    *,
    dataset: FeedbackDataset,
    train_clips: int,
    calib_clips: int,
    held_clips: int,
    decision: dict[str, Any],
    before: dict[str, Any],
    after: dict[str, Any],
    codes: list[str],
    thresholds: dict[str, float],
    production: str,
    candidate: str,
    head: float | None,
    mlflow_run: str | None,
    labels: Any | None = None,
) -> Path:
    """``out/report.md`` + PNGs; returns the markdown's path. ``labels``: the model's
    :class:`~shared_features.labels.LabelSpace`, to name each species by code, scientific and
    common name and taxon class (codes alone without it)."""
    out.mkdir(parents=True, exist_ok=True)
    index = {sp.code: sp for sp in (labels.species if labels is not None else ())}

    def named(code: str) -> str:
        sp = index.get(code)
        if sp is None:
            return str(code)
        return f"`{code}` {sp.common_name} (*{sp.scientific_name}*, {sp.taxon_class})"

    classes = sorted({c["truth"] for c in before["held_back"]} - {NOT_AN_ANIMAL}) + (
        [NOT_AN_ANIMAL] if any(c["truth"] == NOT_AN_ANIMAL for c in before["held_back"]) else []
    )
    plots = _plots(out, codes, before, after, dataset, decision, classes)
    s = dataset.summary()
    lines = [
        f"# Loop run: {'promoted' if decision['promoted'] else 'refused'}",
        "",
        f"**Decision**: {decision['reason']}.",
        "",
        f"Production `{production}` → candidate `{candidate}`"
        + (f"; MLflow loop run `{mlflow_run}`" if mlflow_run else ""),
        "",
        "## Feedback dataset",
        "",
        f"`{s['name']}` (sha256 `{s['sha256'][:16]}…`): {s['clips']} judged clips — "
        f"{train_clips} used for training, {calib_clips} for the thresholds (never trained on), "
        f"{held_clips} held back for the gate. "
        f"Rule: {s['rule']}.",
        "",
        "| source | clips |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in sorted(s["by_source"].items())],
        "",
        "Conflicting verdicts: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(s["conflicts"].items())) or "none")
        + ".",
        "",
        "| species (what it was) | confirmed | wrong species | not an animal |",
        "|---|---|---|---|",
        *[
            f"| {named(sp)} | {v.get('confirmed', 0)} | {v.get('wrong_species', 0)} | "
            f"{v.get('not_an_animal', 0)} |"
            for sp, v in s["per_species"].items()
        ],
        "",
        "## The gate",
        "",
        f"Held-out set: {decision['heldout']}. Held-back clips: {decision['feedback']}.",
        "",
        "| | held-out macro ROC-AUC | flagged errors repeated | flagged corrected | confirmations kept |",
        "|---|---|---|---|---|",
    ]
    for name in ("production", "candidate"):
        f = decision.get(name)
        if f:
            lines.append(
                f"| {name} | {f['heldout_macro_roc_auc']:.4f} | {f['flagged_repeated']} of {f['flagged']} | "
                f"{f['flagged_corrected']} | {f['confirmed_kept']} of {f['confirmed']} |"
            )
    if decision["refusals"]:
        lines += [
            "",
            "Refused because:",
            *[f"- **{r['kind']}**: {r['message']}" for r in decision["refusals"]],
        ]
    if head is not None:
        lines += ["", f"BirdNET-embedding head re-trained: validation macro ROC-AUC {head:.3f}."]
    lines += [
        "",
        "## Per species at the shipped thresholds (held-out soundscape windows)",
        "",
        "| species | threshold before → after | precision before → after | recall before → after |",
        "|---|---|---|---|",
    ]
    judged = sorted(
        {r.reported for r in dataset.rows if r.reported} | {r.label for r in dataset.rows if r.label}
    )
    for c in [c for c in codes if c in judged]:
        b, a = before["species"][c], after["species"][c]
        lines.append(
            f"| {named(c)} | {b['threshold']:.2f} → {a['threshold']:.2f} | {_pct(b['precision'])} → "
            f"{_pct(a['precision'])} | {_pct(b['recall'])} → {_pct(a['recall'])} |"
        )
    if before["held_back"]:
        wrong_b = Counter(c["truth"] for c in before["held_back"] if c["reported"] not in (c["truth"], None))
        wrong_a = Counter(c["truth"] for c in after["held_back"] if c["reported"] not in (c["truth"], None))
        lines += [
            "",
            "## Held-back clips reported as something else (at threshold)",
            "",
            "| what it was | production | candidate |",
            "|---|---|---|",
            *[f"| {named(k)} | {wrong_b.get(k, 0)} | {wrong_a.get(k, 0)} |" for k in classes],
        ]
    if thresholds:
        lines += [
            "",
            "Thresholds shipped (others: the default): "
            + ", ".join(f"{named(c)} {t:.2f}" for c, t in sorted(thresholds.items()))
            + ".",
        ]
    lines += ["", "## Plots", ""]
    for name, title in plots:
        lines += [f"![{title}]({name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
