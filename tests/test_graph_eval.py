"""Knowledge-graph gold sets and their scorer: matching rules, rates, clear errors on bad gold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kb_assistant.errors import KBError
from kb_assistant.eval.graph_quality import (
    exact_same,
    load_gold,
    normalise,
    score_extraction,
    score_resolution,
)

EVAL = Path(__file__).resolve().parent.parent / "eval"
GOLD = EVAL / "graph_gold.jsonl"
PAIRS = EVAL / "graph_resolution.jsonl"


def record(lang: str = "en", rid: str = "x-1") -> dict[str, Any]:
    """A small annotated chunk: three entities, two relations."""
    return {
        "id": rid, "lang": lang, "text": "APT provides apt-get; the FSF is separate.",
        "entities": [
            {"name": "APT", "type": "software", "aliases": ["Advanced Package Tool"]},
            {"name": "apt-get", "type": "software", "aliases": []},
            {"name": "Free Software Foundation", "type": "organization", "aliases": ["FSF"]},
        ],
        "relations": [
            {"source": "APT", "target": "apt-get", "relation": "provides"},
            {"source": "APT", "target": "Free Software Foundation", "relation": "is unrelated"},
        ],
    }  # fmt: skip


def perfect(gold: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The prediction that repeats the gold."""
    return {g["id"]: {"entities": g["entities"], "relations": g["relations"]} for g in gold}


def test_the_gold_files_load_and_a_perfect_prediction_scores_one() -> None:
    gold = load_gold(GOLD)
    langs = [g["lang"] for g in gold]
    assert langs.count("en") >= 22 and langs.count("zh") >= 22
    report = score_extraction(gold, perfect(gold))
    for part in ("overall", "en", "zh"):
        for kind in ("entities", "relations"):
            rates = report[part][kind]
            assert (rates["precision"], rates["recall"], rates["f1"]) == (1.0, 1.0, 1.0)
        assert report[part]["entities"]["type_accuracy"] == 1.0
    assert report["missing"] == [] and report["unknown"] == []
    pairs = load_gold(PAIRS)
    assert len(pairs) >= 60
    oracle = {json.dumps([p["a"], p["b"]], sort_keys=True): p["same"] for p in pairs}
    resolved = score_resolution(pairs, lambda a, b: oracle[json.dumps([a, b], sort_keys=True)])
    assert resolved["overall"]["accuracy"] == 1.0 and resolved["wrong"] == []
    assert resolved["zh"]["pairs"] >= 25 and resolved["en"]["pairs"] >= 25


def test_an_empty_or_missing_prediction_has_recall_zero() -> None:
    gold = [record("en", "a"), record("zh", "b")]
    report = score_extraction(gold, {"a": {"entities": [], "relations": []}})
    for part in ("overall", "en", "zh"):
        assert report[part]["entities"]["recall"] == 0.0
        assert report[part]["relations"]["recall"] == 0.0
        assert report[part]["entities"]["f1"] == 0.0
        assert report[part]["entities"]["precision"] is None  # nothing predicted
    assert report["missing"] == ["b"]
    assert report["overall"]["entities"]["gold"] == 6


def test_an_alias_matches_once_and_a_duplicate_costs_precision() -> None:
    predicted = {"x-1": {"entities": [
        {"name": "the FSF", "type": "organization"},
        {"name": "Free Software Foundation", "type": "organization"},  # the same one again
        {"name": "advanced package tool", "type": "concept"},  # alias, wrong type
    ]}}  # fmt: skip
    entities = score_extraction([record()], predicted)["overall"]["entities"]
    assert (entities["matched"], entities["predicted"], entities["gold"]) == (2, 3, 3)
    assert entities["precision"] == round(2 / 3, 4) and entities["recall"] == round(2 / 3, 4)
    assert entities["type_correct"] == 1 and entities["type_accuracy"] == 0.5


def test_a_reversed_relation_matches_but_a_wrong_pair_does_not() -> None:
    predicted = {"x-1": {"entities": [], "relations": [
        {"source": "apt-get", "target": "Advanced Package Tool", "relation": "is part of"},
        {"source": "apt-get", "target": "FSF", "relation": "made by"},  # not a gold pair
        {"source": "APT", "target": "apt-get", "relation": "provides"},  # gold pair used up
    ]}}  # fmt: skip
    relations = score_extraction([record()], predicted)["overall"]["relations"]
    assert (relations["matched"], relations["predicted"], relations["gold"]) == (1, 3, 2)
    assert relations["recall"] == 0.5


def test_the_languages_are_scored_apart() -> None:
    gold = [record("en", "a"), record("zh", "b")]
    report = score_extraction(gold, {"a": perfect(gold)["a"]})
    assert report["en"]["entities"]["recall"] == 1.0
    assert report["zh"]["entities"]["recall"] == 0.0
    assert report["overall"]["entities"]["recall"] == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("The  Hurd", "hurd"), ("“FSF”", "fsf"), ("《玩具总动员》", "玩具总动员"),
     ("dpkg(8)", "dpkg(8)"), ("`stable'", "stable"), ("Ｄｅｂｉａｎ 计划", "debian计划"),
     ("Debian计划", "debian计划"), ("APT.", "apt")],
)  # fmt: skip
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_resolution_rates_and_wrong_pairs() -> None:
    pairs = [
        {"a": {"name": "APT", "type": "software"}, "b": {"name": "apt", "type": "software"},
         "same": True, "note": ""},
        {"a": {"name": "自由软件基金会", "type": "organization"},
         "b": {"name": "FSF", "type": "organization"}, "same": True, "note": ""},
        {"a": {"name": "dpkg", "type": "software"}, "b": {"name": "dpkg-deb", "type": "software"},
         "same": False, "note": ""},
    ]  # fmt: skip
    report = score_resolution(pairs, exact_same)
    assert report["overall"]["accuracy"] == round(2 / 3, 4)
    assert report["overall"]["precision"] == 1.0 and report["overall"]["recall"] == 0.5
    assert report["zh"]["pairs"] == 1 and report["zh"]["accuracy"] == 0.0
    assert report["en"]["accuracy"] == 1.0
    assert [w["a"]["name"] for w in report["wrong"]] == ["自由软件基金会"]
    assert report["wrong"][0]["predicted"] is False


@pytest.mark.parametrize(
    ("line", "says"),
    [("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"),
     ('{"id": "y", "lang": "fr", "text": "", "entities": []}', "'lang'"),
     (json.dumps({**record(), "relations": [{"source": "APT", "target": "dpkg",
                                             "relation": "uses"}]}), "target"),
     (json.dumps({**record(), "entities": [{"name": "APT", "type": "tool"}]}), "type 'tool'"),
     (json.dumps(record()), "used twice")],
)  # fmt: skip
def test_a_malformed_gold_line_raises_naming_the_line(tmp_path: Path, line: str, says: str) -> None:
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(record()) + "\n\n" + line + "\n", encoding="utf-8")
    with pytest.raises(KBError, match="line 3") as caught:
        load_gold(path)
    assert says in str(caught.value) and str(path) in str(caught.value)
