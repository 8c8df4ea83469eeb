"""``kb eval``: scores that match the shared scorer, reports with plots, clear input errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kb_assistant.cli import EXIT_ERROR, main
from kb_assistant.eval.scoring import first_hit, grams, is_hit, summarize
from tests.files import CHINOOK, REFERENCE_SCORER

FAQ = {
    "How do I install a package?": "Run apt-get install with the package name; apt downloads "
    "the package from the archive, resolves its dependencies and unpacks everything in order.",
    "How do I keep the system up to date?": "Run apt-get update to refresh the package lists, "
    "then apt-get upgrade to install the newer versions of every installed package.",
    "Where are network interfaces configured?": "Interfaces are described in the file "
    "/etc/network/interfaces, read by ifupdown when the ifup and ifdown commands run.",
}
MISSING = ("What colour is the sky on Mars?",
           "The Martian sky is butterscotch by day and blue around the setting sun.")  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def kb(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def faq_kb(tmp_path: Path) -> Path:
    """A knowledge base holding the FAQ (one Markdown file), and its question file."""
    docs = tmp_path / "docs"
    docs.mkdir()
    text = "\n\n".join(f"## {q}\n\n{a}" for q, a in FAQ.items())
    (docs / "faq.md").write_text(f"# Admin FAQ\n\n{text}\n", encoding="utf-8")
    assert kb("ingest", str(docs)).exit_code == 0
    records = [{"id": f"q{i}", "question": q, "gold_text": a}
               for i, (q, a) in enumerate([*FAQ.items(), MISSING], start=1)]  # fmt: skip
    return write_jsonl(tmp_path / "qa.jsonl", records)


def test_hit_rule_and_summary_by_hand() -> None:
    gold = grams(FAQ["How do I install a package?"])
    assert is_hit("Run apt-get install with the package name; apt downloads the package", gold)
    assert not is_hit("Interfaces are described in the file /etc/network/interfaces", gold)
    assert first_hit(["unrelated words here and there", *FAQ.values()], gold) == 2
    scores = summarize([1, 3, None, 6])
    assert scores == {
        "recall@1": 0.25,
        "recall@5": 0.5,
        "mrr@10": round((1 + 1 / 3 + 1 / 6) / 4, 4),
    }


def test_chinese_is_scored_by_character_4grams_as_the_shared_scorer_does() -> None:
    spec = importlib.util.spec_from_file_location("score_retrieval", REFERENCE_SCORER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gold_text = "使用 apt-get install 命令安装软件包，apt 会自动下载并解决依赖关系。"
    # One run of Chinese characters is one "word" by \w+: word 4-grams would see a single
    # gram and call every chunk of this section a miss or a hit by accident.
    chunk = "apt 会自动下载并解决依赖关系"
    other = "网络接口在文件 /etc/network/interfaces 中配置"
    assert grams(gold_text) == module.grams(gold_text)
    assert ("自", "动", "下", "载") in grams(gold_text)
    assert is_hit(chunk, grams(gold_text)) and module.is_hit(chunk, module.grams(gold_text))
    assert not is_hit(other, grams(gold_text))


def test_eval_retrieval_scores_writes_run_report_and_plots(faq_kb: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = kb("eval", "retrieval", str(faq_kb), "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    # The three FAQ questions find their section first; the Mars question cannot.
    assert (scores["recall@1"], scores["recall@5"], scores["mrr@10"]) == (0.75, 0.75, 0.75)
    assert scores["questions"] == 4 and scores["p95_ms"] >= scores["p50_ms"] > 0
    run = [json.loads(line) for line in (out / "run.jsonl").read_text().splitlines()]
    assert [r["id"] for r in run] == ["q1", "q2", "q3", "q4"]
    assert run[0]["retrieved"][0].endswith(FAQ["How do I install a package?"])
    for name in ("recall_at_k.png", "first_hit.png", "latency.png"):
        assert (out / name).read_bytes()[:8] == PNG
    report = (out / "report.md").read_text()
    assert "| recall@5 | 0.75 |" in report and "![first_hit](first_hit.png)" in report
    assert "| q4 | What colour is the sky on Mars? | — |" in report
    spec = importlib.util.spec_from_file_location("score_retrieval", REFERENCE_SCORER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shared = module.score(str(faq_kb), str(out / "run.jsonl"))
    assert {k: scores[k] for k in shared} == shared


def test_eval_answers_abstention_and_citations(faq_kb: Path, tmp_path: Path) -> None:
    answerable = tmp_path / "answerable.jsonl"
    answerable.write_text("".join(faq_kb.read_text().splitlines(keepends=True)[:3]))
    offtopic = write_jsonl(tmp_path / "off.jsonl", [
        {"question": "Who won the football world cup in 1998?"},
        {"question": "什么是量子纠缠？"},
    ])  # fmt: skip
    out = tmp_path / "answers"
    result = kb("eval", "answers", str(answerable), "--offtopic", str(offtopic),
                "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    # The scripted model quotes source [1], which is the gold section for each question.
    assert scores["answerable"] == 3 and scores["offtopic"] == 2
    assert scores["false_abstention"] == 0.0 and scores["offtopic_abstention"] == 1.0
    assert scores["abstained_with_sources"] == 0
    assert scores["answers_citing_inline"] == 1.0 and scores["inline_citation_precision"] == 1.0
    for name in ("abstention.png", "evidence.png", "citations.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_gold_answers_are_graded_by_their_facts(faq_kb: Path, tmp_path: Path) -> None:
    records = [json.loads(line) for line in faq_kb.read_text().splitlines()[:3]]
    # The scripted model answers with the start of passage [1] (the section's heading here).
    records[0] |= {"all": ["install"], "any": ["a package", "软件包"]}
    records[1] |= {"all": ["keep the system", "UP TO DATE"]}  # case does not matter
    records[2] |= {"any": ["/etc/fstab"]}  # not in the answer: wrong
    answerable = write_jsonl(tmp_path / "gold.jsonl", records)
    out = tmp_path / "graded"
    result = kb("eval", "answers", str(answerable), "--limit", "3", "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert (scores["graded"], scores["correctness"], scores["wrong_answers"]) == (3, 0.6667, 1)
    assert scores["median_ttft_s"] is not None
    assert (out / "correctness.png").read_bytes()[:8] == PNG
    assert "| q3 | yes | no | no |" in (out / "report.md").read_text()
    assert scores["wrong_flagged"] is not None and scores["correct_flagged"] is not None


def test_gold_facts_rule_and_bad_fields() -> None:
    from kb_assistant.errors import KBError
    from kb_assistant.eval.answers import gold_facts, is_correct

    facts = gold_facts({"question": "q", "all": ["apt"], "any": ["dpkg", "aptitude"]})
    assert facts == (["apt"], ["dpkg", "aptitude"])
    assert is_correct("Use APT, or Aptitude.", facts)
    assert not is_correct("Use apt.", facts) and not is_correct("Use dpkg.", facts)
    # Chinese text spaces digits and Latin words, or not: the fact holds either way.
    spaced = gold_facts({"question": "q", "any": ["运行级别是 2"]})
    assert spaced is not None and is_correct("默认的运行级别是2。", spaced)
    assert not is_correct("默认的运行级别是3。", spaced)
    assert gold_facts({"question": "q", "gold_text": "g"}) is None
    with pytest.raises(KBError, match="'any' must be a list of non-empty strings"):
        gold_facts({"id": "x", "question": "q", "any": "dpkg"})
    with pytest.raises(KBError, match="'all' and 'any' are both empty"):
        gold_facts({"id": "x", "question": "q", "all": [], "any": []})


def test_eval_sql_execution_accuracy_on_chinook(tmp_path: Path) -> None:
    questions = write_jsonl(tmp_path / "sql.jsonl", [
        {"id": "tracks", "question": "How many tracks are in the database?", "answer": 3503},
        {"id": "wrong", "question": "How many media types are there?", "answer": 99},
    ])  # fmt: skip
    out = tmp_path / "sql"
    result = kb("eval", "sql", str(questions), "--database", f"sqlite:///{CHINOOK}",
                "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert (scores["questions"], scores["passed"], scores["execution_accuracy"]) == (2, 1, 0.5)
    report = (out / "report.md").read_text()
    assert "| tracks | How many tracks are in the database? | yes |" in report
    assert "| wrong | How many media types are there? | no |" in report
    assert (out / "sql_results.png").read_bytes()[:8] == PNG
    assert not [k for k in json.loads(kb("kbs", "--json").output) if k["name"].startswith("eval")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "question": "q?", "gold_text": "g"}\n{"id": "b", "question": \n',
         "line 2: not valid JSON"),
        ('{"id": "a", "question": "q?"}\n', "line 1: missing field(s) gold_text"),
        ('{"id": "a", "question": "q?", "gold_text": "g"}\n' * 2, "line 2: id 'a' appears twice"),
        ("\n\n", "holds no questions"),
    ],
)  # fmt: skip
def test_eval_rejects_bad_question_files(tmp_path: Path, content: str, message: str) -> None:
    qa = tmp_path / "qa.jsonl"
    qa.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "retrieval", str(qa)])
    assert result.exit_code == EXIT_ERROR and message in result.stderr
    missing = CliRunner().invoke(main, ["eval", "sql", str(tmp_path / "nope.jsonl")])
    assert missing.exit_code == EXIT_ERROR and "question file not found" in missing.stderr
