"""Evaluation reports: markdown + PNG plots from a predictions file and a truth file (both in the
BirdCLEF solution format). The report names the data it was computed on and never tunes anything
on it: no threshold, weight or calibration is fitted here."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from shared_features import LabelSpace
from training.dataset import read_solution_csv
from training.errors import DatasetError
from training.metrics import MetricReport, evaluate


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def find_taxonomy(truth: Path) -> Path | None:
    for d in (truth.parent, truth.parent.parent):
        if (d / "taxonomy.csv").is_file():
            return d / "taxonomy.csv"
    return None


def load_pair(
    predictions: Path, truth: Path, labels: LabelSpace | None
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    t_ids, t_codes, y = read_solution_csv(truth, labels)
    p_ids, p_codes, s = read_solution_csv(predictions, labels)
    if set(p_codes) != set(t_codes):
        raise DatasetError(f"{predictions}: species columns differ from {truth}")
    missing = sorted(set(t_ids) - set(p_ids))
    if missing:
        raise DatasetError(f"{predictions}: {len(missing)} truth rows have no prediction (e.g. {missing[0]})")
    extra = sorted(set(p_ids) - set(t_ids))
    if extra:
        raise DatasetError(f"{predictions}: {len(extra)} rows are not in the truth (e.g. {extra[0]})")
    pos = {rid: i for i, rid in enumerate(p_ids)}
    col = [p_codes.index(c) for c in t_codes]
    s = s[[pos[r] for r in t_ids]][:, col]
    return y, s, t_codes, t_ids


def write_report(
    predictions: Path,
    truth: Path,
    out: Path,
    *,
    taxonomy: Path | None = None,
    data_name: str | None = None,
    model_name: str | None = None,
) -> MetricReport:
    """Compute every metric and write ``report.md``, ``metrics.json`` and the plots to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    taxonomy = taxonomy or find_taxonomy(truth)
    labels = LabelSpace.from_taxonomy_csv(taxonomy) if taxonomy else None
    y, s, codes, _ids = load_pair(predictions, truth, labels)
    classes = [labels[c].taxon_class for c in codes] if labels else None
    data = data_name or f"{truth} (sha256 {_sha(truth)})"
    rep = evaluate(y, s, codes, classes, data)
    out.mkdir(parents=True, exist_ok=True)
    t = y > 0.5

    # 1. per-species AP
    ap_items = sorted(rep.per_species_ap.items(), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(8, max(3, 0.18 * len(ap_items))))
    ax.barh([k for k, _ in ap_items], [v for _, v in ap_items], color="#3a7d44")
    ax.set_xlabel("average precision")
    ax.set_xlim(0, 1)
    ax.set_title("Per-species average precision")
    fig.tight_layout()
    fig.savefig(out / "per_species_ap.png", dpi=110)
    plt.close(fig)
    # 2. score distributions
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(float(s.min()), float(s.max()) + 1e-9, 40)
    ax.hist(s[~t], bins=bins, alpha=0.6, density=True, label=f"negatives ({int((~t).sum())})")
    ax.hist(s[t], bins=bins, alpha=0.6, density=True, label=f"positives ({int(t.sum())})")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("Score distributions, all species")
    fig.tight_layout()
    fig.savefig(out / "score_distributions.png", dpi=110)
    plt.close(fig)
    # 3. reliability curve (only meaningful for probabilities)
    rel_rows = []
    if s.min() >= 0 and s.max() <= 1:
        edges = np.linspace(0, 1, 11)
        which = np.clip(np.digitize(s.ravel(), edges) - 1, 0, 9)
        for b in range(10):
            m = which == b
            if m.any():
                rel_rows.append((float(s.ravel()[m].mean()), float(t.ravel()[m].mean()), int(m.sum())))
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot([r[0] for r in rel_rows], [r[1] for r in rel_rows], "o-", label="model")
        ax.set_xlabel("mean predicted probability")
        ax.set_ylabel("fraction positive")
        ax.legend()
        ax.set_title("Reliability")
        fig.tight_layout()
        fig.savefig(out / "reliability.png", dpi=110)
        plt.close(fig)
    # 4. per-taxon summary
    if rep.per_class:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = list(rep.per_class)
        ax.bar(names, [rep.per_class[n]["roc_auc"] for n in names], color="#2a6f97")
        ax.set_ylim(0, 1)
        ax.set_ylabel("macro ROC-AUC")
        ax.set_title("Per taxon class")
        fig.tight_layout()
        fig.savefig(out / "per_class.png", dpi=110)
        plt.close(fig)

    L = [
        "# Evaluation report",
        "",
        f"- **Data**: {rep.data}",
        f"- **Predictions**: {predictions} (sha256 {_sha(predictions)})",
        *([f"- **Model**: {model_name}"] if model_name else []),
        f"- windows: {rep.n_windows}; species with ≥ 1 positive window (scored): "
        f"{rep.n_species_scored} of {len(codes)} (the others are skipped, as in BirdCLEF 2025)",
        "- Nothing in this report was tuned on this data: scores are reported as given.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro ROC-AUC (BirdCLEF 2025) | {rep.macro_roc_auc:.4f} |",
        f"| macro average precision | {rep.macro_ap:.4f} |",
    ]
    if rep.top1 is not None:
        L += [
            f"| top-1 accuracy (windows with a positive) | {rep.top1:.4f} |",
            f"| top-5 accuracy | {rep.top5:.4f} |",
        ]
    L.append("")
    if rep.per_class:
        L += [
            "## Per taxon class",
            "",
            "| class | species scored | macro ROC-AUC | macro AP |",
            "|---|---|---|---|",
            *[
                f"| {c} | {int(m['species_scored'])} | {m['roc_auc']:.4f} | {m['ap']:.4f} |"
                for c, m in rep.per_class.items()
            ],
            "",
            "![per class](per_class.png)",
            "",
        ]
    L += [
        "## Per species",
        "",
        "| species | name | class | ROC-AUC | AP | positives |",
        "|---|---|---|---|---|---|",
    ]
    for j, c in enumerate(codes):
        if c not in rep.per_species_auc:
            continue
        sp = labels[c] if labels else None
        L.append(
            f"| {c} | {sp.scientific_name + ' (' + sp.common_name + ')' if sp else ''} | "
            f"{sp.taxon_class if sp else ''} | {rep.per_species_auc[c]:.4f} | "
            f"{rep.per_species_ap[c]:.4f} | {int(t[:, j].sum())} |"
        )
    L += [
        "",
        "![per-species AP](per_species_ap.png)",
        "",
        "## Score distributions",
        "",
        "![scores](score_distributions.png)",
        "",
    ]
    if rel_rows:
        L += [
            "## Reliability",
            "",
            "| mean predicted | fraction positive | windows×species |",
            "|---|---|---|",
            *[f"| {a:.3f} | {b:.3f} | {n} |" for a, b, n in rel_rows],
            "",
            "![reliability](reliability.png)",
            "",
        ]
    else:
        L += ["## Reliability", "", "Scores are not probabilities in [0, 1]: no reliability curve.", ""]
    (out / "report.md").write_text("\n".join(L))
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "data": rep.data,
                "predictions": str(predictions),
                **rep.as_flat_dict(),
                "per_species_auc": rep.per_species_auc,
                "per_species_ap": rep.per_species_ap,
            },
            indent=2,
        )
    )
    return rep
