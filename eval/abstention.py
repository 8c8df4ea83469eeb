"""Calibrate and measure the abstention gate (no chat model is called).

For every question: retrieve as ``kb ask`` does and compute the gate's evidence (best dense
cosine; largest share of the question's words found in one of the top passages). Then:

* calibrate: on answerable questions (a FAQ set) and a *calibration* set of off-topic questions,
  grid-search (min_dense, min_coverage) for the most off-topic abstention with at most 5% false
  abstention on the answerable ones, and report the lowest such pair (the defaults add a margin
  above it);
* report: false-abstention rate on the answerable set and abstention rate on a *held-out*
  off-topic set, for the settings in force (or the calibrated pair with --calibrated).

Usage: python eval/abstention.py FAQ_QA.jsonl CALIBRATION.jsonl OFFTOPIC.jsonl HTML_FILE...
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load(path: Path) -> list[str]:
    """Questions of a JSONL file."""
    return [json.loads(line)["question"] for line in path.open(encoding="utf-8")]


def main(argv: list[str]) -> None:
    """Compute evidence, calibrate, report."""
    from kb_assistant.assistant import build_assistant
    from kb_assistant.chains.rag import RagParams, evidence
    from kb_assistant.settings import load_settings

    faq, calibration, offtopic = (Path(a) for a in argv[:3])
    files = [Path(a) for a in argv[3:]]
    assistant = build_assistant(load_settings(Path(tempfile.mkdtemp(prefix="kb-abstain-"))))
    assistant.ingest(files, kb="faq")
    candidates = RagParams().candidates

    def scores(questions: list[str]) -> list[tuple[float, float]]:
        return [evidence(q, assistant.search(q, k=candidates, kb="faq")) for q in questions]

    answerable, cal, held_out = scores(load(faq)), scores(load(calibration)), scores(load(offtopic))

    def rate(rows: list[tuple[float, float]], dense: float, cover: float) -> float:
        return sum(d < dense and c < cover for d, c in rows) / len(rows)

    grid = [(d / 100, c / 100) for d in range(20, 96, 1) for c in (50, 60, 67, 75, 80, 90, 101)]
    feasible = [(-rate(cal, d, c), d, c) for d, c in grid if rate(answerable, d, c) <= 0.05]
    # The most off-topic abstention, then the *lowest* thresholds that reach it: real questions
    # are less literal than FAQ headings, so leave answerable ones as much room as possible.
    best = min(feasible)
    settings = assistant.settings
    chosen = (assistant.rag_chain("faq").params.min_dense, settings.abstain_min_coverage)
    report = {
        "answerable_questions": len(answerable),
        "offtopic_calibration": len(cal),
        "offtopic_held_out": len(held_out),
        "calibrated_lowest": {"min_dense": best[1], "min_coverage": best[2],
                              "false_abstention": rate(answerable, best[1], best[2]),
                              "calibration_abstention": -best[0]},
        "settings": {"min_dense": chosen[0], "min_coverage": chosen[1]},
        "false_abstention": round(rate(answerable, *chosen), 4),
        "offtopic_abstention_calibration": round(rate(cal, *chosen), 4),
        "offtopic_abstention_held_out": round(rate(held_out, *chosen), 4),
        "dense_answerable_p05": round(sorted(d for d, _ in answerable)[len(answerable) // 20], 4),
        "dense_offtopic_max": round(max(d for d, _ in cal + held_out), 4),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    # The evidence itself, for calibrating one threshold across languages (stderr).
    rows = {"answerable": answerable, "calibration": cal, "held_out": held_out}
    print(json.dumps(rows), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
