"""The agent over a table that came out of a PDF: execution accuracy on five questions.

A two-page report is drawn with a bordered table of 14 regions (fpdf2, tests/files.py), added
with ``kb table add`` (each bordered table becomes a SQL table), and ``kb eval sql`` asks the
five questions below (two in Chinese) with the configured chat model at temperature 0. The gold
answers are computed from the rows the PDF was drawn from, not from what was extracted.

Usage: python -m bench.pdf_table_agent [--model qwen2.5-coder-1.5b]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.files import make_table_pdf

REGIONS = [
    ("North", 1250, 98_400.50, "Alice Chen"), ("South", 980, 71_230.00, "Bob Li"),
    ("East", 1420, 120_015.75, "Carol Wang"), ("West", 760, 55_300.20, "David Zhao"),
    ("Central", 1105, 88_910.00, "Eve Liu"), ("Northeast", 640, 47_820.40, "Frank Sun"),
    ("Northwest", 520, 39_105.00, "Grace Zhou"), ("Southeast", 1330, 104_560.90, "Henry Wu"),
    ("Southwest", 870, 66_410.30, "Ivy Xu"), ("Coast", 1010, 80_220.00, "Jack Ma"),
    ("Highlands", 410, 30_990.60, "Kate Hu"), ("Islands", 300, 24_750.00, "Leo He"),
    ("Valley", 690, 51_480.80, "Mia Gao"), ("Plains", 905, 69_330.10, "Ned Lin"),
]  # fmt: skip


def questions() -> list[dict[str, object]]:
    """Five questions and their answers, computed from ``REGIONS``."""
    revenue = round(sum(r[2] for r in REGIONS), 2)
    most_units = max(REGIONS, key=lambda r: r[1])[0]
    over = sum(1 for r in REGIONS if r[2] > 80_000)
    lowest = min(REGIONS, key=lambda r: r[2])
    return [
        {"id": "pdf-1", "language": "en", "answer": revenue,
         "question": "What is the total revenue of all regions in the quarterly report?"},
        {"id": "pdf-2", "language": "en", "answer": most_units,
         "question": "Which region sold the most units?"},
        {"id": "pdf-3", "language": "en", "answer": over,
         "question": "How many regions had revenue above 80,000?"},
        {"id": "pdf-4", "language": "zh", "answer": lowest[3],
         "question": "收入最低的地区的经理是谁？"},
        {"id": "pdf-5", "language": "zh", "answer": sum(r[1] for r in REGIONS),
         "question": "所有地区的销量总共是多少？"},
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-1.5b")
    args = parser.parse_args()
    kb = [sys.executable, "-m", "kb_assistant.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        pdf = Path(tmp) / "quarterly.pdf"
        rows = [["Region", "Units", "Revenue", "Manager"]] + [
            [name, f"{units:,}", f"{revenue:,.2f}", manager]
            for name, units, revenue, manager in REGIONS
        ]
        intro = "Quarterly sales report. Units sold and revenue per region, with its manager."
        make_table_pdf(pdf, [intro, rows, "Figures are unaudited."])
        env = {**os.environ, "KB_TEMPERATURE": "0", "KB_SEED": "1", "KB_CHAT_MODEL": args.model}
        added = subprocess.run([*kb, "--home", str(home), "table", "add", str(pdf)], env=env,
                               capture_output=True, text=True, check=True)  # fmt: skip
        print(added.stdout.strip())
        asked = Path(tmp) / "questions.jsonl"
        asked.write_text("\n".join(json.dumps(q, ensure_ascii=False) for q in questions()))
        out = Path(tmp) / "report"
        run = subprocess.run([*kb, "--home", str(home), "eval", "sql", str(asked), "--json",
                              "--out", str(out)],
                             env=env, capture_output=True, text=True, check=False)  # fmt: skip
        if run.returncode not in (0, 1):
            sys.exit(run.stderr)
        print(json.dumps(json.loads(run.stdout), indent=1, ensure_ascii=False))
        report = out / "report.md"
        print(report.read_text(encoding="utf-8") if report.exists() else run.stderr)


if __name__ == "__main__":
    main()
