"""Evaluation reports: a Markdown file and PNG plots in one folder.

Plots are drawn with matplotlib's Agg backend (no display, nothing fetched); each plot function
takes the evaluation's numbers and the file to write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb_assistant.eval.scoring import recall_curve


def cell(value: Any) -> str:
    """A value as one Markdown table cell."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).split()).replace("|", "\\|")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def write_report(
    folder: Path, title: str, intro: Sequence[str], scores: dict[str, Any], *,
    details: tuple[Sequence[str], Sequence[Sequence[Any]]], plots: Sequence[str],
) -> Path:  # fmt: skip
    """Write ``report.md`` (and ``scores.json``) into ``folder``; returns the report's path."""
    lines = [f"# {title}", ""]
    for paragraph in intro:
        lines += [paragraph, ""]
    lines += ["## Scores", ""]
    lines += table(["measure", "value"], [(k, v) for k, v in scores.items()])
    lines += ["", "## Plots", ""] if plots else []
    lines += [f"![{Path(p).stem}]({p})" for p in plots]
    lines += ["", "## Questions", "", *table(*details), ""]
    report = folder / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    (folder / "scores.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return report


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path.name


def plot_recall(ranks: Sequence[int | None], path: Path) -> str:
    """recall@k for k = 1..10."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    curve = recall_curve(ranks)
    ax.plot(range(1, 11), curve, marker="o")
    ax.set(xlabel="k", ylabel="recall@k", ylim=(0, 1.02), xticks=range(1, 11),
           title="Recall at k")  # fmt: skip
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_first_hit(ranks: Sequence[int | None], path: Path) -> str:
    """How many questions found their first gold passage at each rank (or not at all)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    labels = [str(r) for r in range(1, 11)] + ["miss"]
    counts = [sum(r == k for r in ranks) for k in range(1, 11)] + [sum(r is None for r in ranks)]
    ax.bar(labels, counts, color=["#4c78a8"] * 10 + ["#e45756"])
    ax.set(xlabel="rank of the first gold passage", ylabel="questions", title="First hit")
    return _save(fig, path)


def plot_latency(values_ms: Sequence[float], path: Path, title: str = "Search latency") -> str:
    """A histogram of per-question times."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values_ms, bins=30, color="#72b7b2")
    ax.set(xlabel="ms", ylabel="questions", title=title)
    return _save(fig, path)


def plot_abstention(scores: dict[str, Any], path: Path) -> str:
    """Abstention on answerable (should be low) and off-topic (should be high) questions."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = ["answerable\n(false abstention)", "off-topic\n(abstention)"]
    values = [scores["false_abstention"] or 0.0, scores["offtopic_abstention"] or 0.0]
    ax.bar(names, values, color=["#e45756", "#54a24b"])
    ax.set(ylim=(0, 1.05), ylabel="share of questions", title="Abstention")
    for x, v in enumerate(values):
        ax.text(x, v + 0.02, f"{v:.0%}", ha="center")
    return _save(fig, path)


def plot_evidence(rows: Sequence[dict[str, Any]], threshold: float, path: Path) -> str:
    """Best dense cosine per question, answerable against off-topic, with the gate."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for answerable, label, color in ((True, "answerable", "#4c78a8"),
                                     (False, "off-topic", "#f58518")):  # fmt: skip
        values = [r["dense"] for r in rows if r["answerable"] is answerable and r["dense"]]
        if values:
            ax.hist(values, bins=20, range=(0, 1), alpha=0.7, label=label, color=color)
    ax.axvline(threshold, color="black", linestyle="--", label=f"gate {threshold}")
    ax.set(xlabel="best dense cosine", ylabel="questions", title="Retrieval evidence")
    ax.legend()
    return _save(fig, path)


def plot_correctness(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Graded answers: correct, wrong, refused; and seconds to the first token."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    graded = [r for r in rows if r.get("correct") is not None]
    groups = {
        "correct": sum(bool(r["correct"]) for r in graded),
        "wrong": sum(r["correct"] is False and not r["refused"] for r in graded),
        "refused": sum(r["refused"] for r in graded),
    }
    left.bar(list(groups), list(groups.values()), color=["#54a24b", "#e45756", "#bab0ac"])
    left.set(ylabel="answers", title="Answer correctness")
    ttfts = [r["ttft_s"] for r in rows if r.get("ttft_s") is not None]
    right.hist(ttfts, bins=20, color="#72b7b2")
    right.set(xlabel="seconds to the first token", ylabel="answers", title="Wait")
    return _save(fig, path)


def plot_citations(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Answered questions by what their citations point at."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    answered = [r for r in rows if r["answerable"] and not r["refused"]]
    groups = {
        "cites gold": sum(r["correct_citations"] > 0 for r in answered),
        "cites other": sum(r["citations"] > 0 and r["correct_citations"] == 0 for r in answered),
        "no citation": sum(r["citations"] == 0 for r in answered),
    }
    ax.bar(list(groups), list(groups.values()), color=["#54a24b", "#e45756", "#bab0ac"])
    ax.set(ylabel="answers", title="What the answers cite")
    return _save(fig, path)


def plot_sql(rows: Sequence[dict[str, Any]], path: Path) -> str:
    """Seconds per question, coloured by pass or fail."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(rows) + 1.2))
    ids = [r["id"] for r in rows]
    colors = ["#54a24b" if r["pass"] else "#e45756" for r in rows]
    ax.barh(ids, [r["seconds"] for r in rows], color=colors)
    ax.invert_yaxis()
    ax.set(xlabel="seconds (green: pass, red: fail)", title="SQL questions")
    return _save(fig, path)
