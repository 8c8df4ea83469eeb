"""Knowledge-graph quality: entity/relation extraction and entity resolution against gold.

Two gold files, both JSON lines (``load_gold`` reads either):

* ``graph_gold.jsonl``: chunks annotated by hand, each ``{"id", "lang", "text", "entities":
  [{"name", "type", "aliases"}], "relations": [{"source", "target", "relation"}], ...}``;
  ``score_extraction`` rates an extractor's entities and relations against it.
* ``graph_resolution.jsonl``: pairs of mentions ``{"a": {"name", "type"}, "b": {...}, "same",
  "note"}``; ``score_resolution`` rates a decision function that says whether two mentions
  name the same entity.

Names compare after ``normalise`` (width, case, surrounding punctuation, spaces, a leading
"the"). A predicted entity matches a gold entity when its name equals the gold name or one of
its aliases; a predicted relation matches a gold relation when its two endpoints name the gold
relation's two entities, in either order (the label is not compared). Each gold item is matched
at most once and each predicted item at most once, so duplicates count against precision.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from kb_assistant.errors import KBError
from kb_assistant.eval.scoring import CJK

LANGUAGES = ("en", "zh")
TYPES = frozenset(
    ("person", "organization", "place", "software", "concept", "event", "document", "other")
)

_CJK = re.compile(f"[{CJK}]")
# Spaces next to a CJK character are optional in Chinese text ("Debian 计划", "Debian计划").
_CJK_SPACE = re.compile(f"(?<=[{CJK}]) +| +(?=[{CJK}])")
# An opening mark -> its closing mark (`quoted' is how the Debian FAQ quotes).
_PAIRS = dict(zip("([{<“‘«《〈「『【〔\"'`", ")]}>”’»》〉」』】〕\"''", strict=True))
_CLOSERS = {close: open_ for open_, close in _PAIRS.items() if open_ != close}
# Punctuation that is part of a name at its edge (C#, C++ is not punctuation anyway).
_KEEP = frozenset("#%&*@+")


def _is_edge_mark(ch: str) -> bool:
    """Whether ``ch`` is punctuation or a quote-like mark that may be stripped from an edge."""
    if ch in _KEEP:
        return False
    return unicodedata.category(ch).startswith("P") or ch in "`´"


def _strip_edges(text: str) -> str:
    """``text`` without surrounding punctuation and quotes; a bracket that closes one opened
    inside the name stays (``dpkg(8)``, ``Debian 6.0 (Squeeze)``)."""
    while text:
        first, last = text[0], text[-1]
        if len(text) > 1 and _PAIRS.get(first) == last:
            text = text[1:-1].strip()
        elif _is_edge_mark(first) and not (first in _PAIRS and _PAIRS[first] in text[1:]):
            text = text[1:].lstrip()
        elif _is_edge_mark(last) and not (last in _CLOSERS and _CLOSERS[last] in text[:-1]):
            text = text[:-1].rstrip()
        else:
            break
    return text


def normalise(name: str) -> str:
    """The form in which names compare.

    NFKC (full-width letters and brackets become ASCII), casefold, surrounding punctuation and
    quotes stripped, internal whitespace collapsed to one space and dropped next to a CJK
    character, and a leading English article "the " dropped: ``"The  Hurd"`` -> ``"hurd"``,
    ``"《玩具总动员》"`` -> ``"玩具总动员"``, ``"Debian 计划"`` -> ``"debian计划"``.
    """
    text = " ".join(unicodedata.normalize("NFKC", name).casefold().split())
    text = _strip_edges(text)
    if text.startswith("the "):
        text = _strip_edges(text[4:].lstrip())
    return _CJK_SPACE.sub("", text)


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a Chinese/Japanese ideograph."""
    return bool(_CJK.search(text))


# --- loading -----------------------------------------------------------------------------


def _check_entity(entity: Any) -> str | None:
    """What is wrong with a gold entity, or None."""
    if not isinstance(entity, dict):
        return "an entity is not an object"
    name, kind = entity.get("name"), entity.get("type")
    if not isinstance(name, str) or not normalise(name):
        return f"entity {entity!r} has no name"
    if kind not in TYPES:
        return f"entity {name!r} has type {kind!r}, not one of {', '.join(sorted(TYPES))}"
    aliases = entity.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        return f"entity {name!r}: 'aliases' must be a list of non-empty strings"
    return None


def _check_header(record: dict[str, Any]) -> str | None:
    """What is wrong with an annotated chunk's id, language or text, or None."""
    if not isinstance(record.get("id"), str) or not record["id"]:
        return "no 'id'"
    if record.get("lang") not in LANGUAGES:
        return f"'lang' is {record.get('lang')!r}, not one of {', '.join(LANGUAGES)}"
    if not isinstance(record.get("text"), str):
        return "no 'text'"
    return None


def _check_relation(relation: Any, names: list[str]) -> str | None:
    """What is wrong with a gold relation, or None."""
    if not isinstance(relation, dict):
        return "a relation is not an object"
    for end in ("source", "target"):
        if relation.get(end) not in names:
            return f"relation {relation!r}: {end} is not one of the record's entity names"
    if not isinstance(relation.get("relation"), str) or not relation["relation"]:
        return f"relation {relation!r} has no 'relation' label"
    return None


def _check_extraction(record: dict[str, Any]) -> str | None:
    """What is wrong with an annotated chunk, or None."""
    if problem := _check_header(record):
        return problem
    entities, relations = record.get("entities"), record.get("relations", [])
    if not isinstance(entities, list) or not isinstance(relations, list):
        return "'entities' and 'relations' must be lists"
    names = [e["name"] for e in entities if isinstance(e, dict) and "name" in e]
    problems = (
        *(_check_entity(e) for e in entities),
        "two entities share a name" if len(set(names)) != len(names) else None,
        *(_check_relation(r, names) for r in relations),
    )
    return next((p for p in problems if p), None)


def _check_pair(record: dict[str, Any]) -> str | None:
    """What is wrong with a resolution pair, or None."""
    for side in ("a", "b"):
        mention = record.get(side)
        if not isinstance(mention, dict) or not isinstance(mention.get("name"), str):
            return f"'{side}' must be an object with a 'name'"
        if mention.get("type") not in TYPES:
            return f"'{side}' has type {mention.get('type')!r}, not one of the entity types"
    if not isinstance(record.get("same"), bool):
        return "'same' must be true or false"
    return None


def load_gold(path: Path) -> list[dict[str, Any]]:
    """The records of a gold file: annotated chunks, or resolution pairs (records with "a" and
    "b"). Blank lines are skipped.

    Raises:
        KBError: the file cannot be read, or a line is not JSON, not an object, or not a
            well-formed record (names the file and the line number); or two records share an
            id.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise KBError(f"cannot read the graph gold file {path}: {exc}") from exc
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KBError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise KBError(f"{path}, line {number}: not a JSON object")
        problem = _check_pair(record) if "a" in record and "b" in record else (
            _check_extraction(record))  # fmt: skip
        if problem is None and "id" in record:
            problem = f"id {record['id']!r} is used twice" if record["id"] in seen else None
            seen.add(str(record["id"]))
        if problem:
            raise KBError(f"{path}, line {number}: {problem}")
        records.append(record)
    return records


# --- matching and rates ------------------------------------------------------------------


def _max_matching(n_pred: int, candidates: Sequence[Sequence[int]]) -> dict[int, int]:
    """A maximum one-to-one matching of predicted items to gold items.

    Args:
        n_pred: how many predicted items there are.
        candidates: for each predicted item, the indexes of the gold items it may match.

    Returns:
        gold index -> the predicted index matched to it.
    """
    owner: dict[int, int] = {}

    def place(pred: int, visited: set[int]) -> bool:
        for gold in candidates[pred]:
            if gold in visited:
                continue
            visited.add(gold)
            if gold not in owner or place(owner[gold], visited):
                owner[gold] = pred
                return True
        return False

    for pred in range(n_pred):
        place(pred, set())
    return owner


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _prf(matched: int, gold: int, predicted: int) -> dict[str, Any]:
    """Counts with precision, recall and F1 (None where undefined: nothing to divide by)."""
    return {
        "gold": gold, "predicted": predicted, "matched": matched,
        "precision": _rate(matched, predicted), "recall": _rate(matched, gold),
        "f1": _rate(2 * matched, gold + predicted),
    }  # fmt: skip


def _forms(entity: dict[str, Any]) -> set[str]:
    """The normalised name and aliases of a gold entity."""
    forms = {normalise(str(entity["name"]))}
    forms.update(normalise(a) for a in entity.get("aliases", []))
    forms.discard("")
    return forms


def _items(value: Any) -> list[dict[str, Any]]:
    """The dict items of a predicted list (anything else in it is ignored)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _score_record(gold: dict[str, Any], predicted: dict[str, Any]) -> dict[str, int]:
    """The match counts of one chunk."""
    gold_entities = gold["entities"]
    forms = [_forms(e) for e in gold_entities]
    index = {str(e["name"]): i for i, e in enumerate(gold_entities)}
    pred_entities = _items(predicted.get("entities"))

    def refers_to(name: Any) -> list[int]:
        key = normalise(str(name)) if name is not None else ""
        return [i for i, f in enumerate(forms) if key and key in f]

    matching = _max_matching(len(pred_entities), [refers_to(e.get("name")) for e in pred_entities])
    typed = sum(
        str(pred_entities[p].get("type", "")).strip().casefold() == gold_entities[g]["type"]
        for g, p in matching.items()
    )
    gold_relations = [(index[r["source"]], index[r["target"]]) for r in gold["relations"]]
    pred_relations = _items(predicted.get("relations"))
    candidates = []
    for rel in pred_relations:
        sources, targets = set(refers_to(rel.get("source"))), set(refers_to(rel.get("target")))
        candidates.append([
            i for i, (s, t) in enumerate(gold_relations)
            if (s in sources and t in targets) or (t in sources and s in targets)
        ])  # fmt: skip
    relations = _max_matching(len(pred_relations), candidates)
    return {
        "gold_entities": len(gold_entities), "predicted_entities": len(pred_entities),
        "matched_entities": len(matching), "typed": typed,
        "gold_relations": len(gold_relations), "predicted_relations": len(pred_relations),
        "matched_relations": len(relations),
    }  # fmt: skip


def _summary(counts: Iterable[dict[str, int]]) -> dict[str, Any]:
    """Micro-averaged rates over the counts of several chunks."""
    total: dict[str, int] = {}
    chunks = 0
    for c in counts:
        chunks += 1
        for key, value in c.items():
            total[key] = total.get(key, 0) + value
    get = total.get
    entities = _prf(get("matched_entities", 0), get("gold_entities", 0),
                    get("predicted_entities", 0))  # fmt: skip
    entities["type_correct"] = get("typed", 0)
    entities["type_accuracy"] = _rate(get("typed", 0), get("matched_entities", 0))
    relations = _prf(get("matched_relations", 0), get("gold_relations", 0),
                     get("predicted_relations", 0))  # fmt: skip
    return {"chunks": chunks, "entities": entities, "relations": relations}


def score_extraction(
    gold: list[dict[str, Any]], predicted: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Entity and relation precision/recall/F1 of an extractor, overall and per language.

    Args:
        gold: annotated chunks (``load_gold``).
        predicted: gold id -> ``{"entities": [{"name", "type", ...}], "relations":
            [{"source", "target", "relation", ...}]}``; an id left out counts as an empty
            prediction, an id not in the gold is ignored (and listed).

    Returns:
        ``{"overall": ..., "en": ..., "zh": ..., "missing": [ids], "unknown": [ids]}``; each
        summary holds ``chunks``, ``entities`` (gold/predicted/matched counts, precision,
        recall, f1, type_correct, type_accuracy over matched pairs) and ``relations`` (counts,
        precision, recall, f1). A rate is None where its denominator is 0.
    """
    rows = [(g["lang"], _score_record(g, predicted.get(g["id"]) or {})) for g in gold]
    report: dict[str, Any] = {"overall": _summary(c for _, c in rows)}
    for lang in LANGUAGES:
        report[lang] = _summary(c for code, c in rows if code == lang)
    ids = {g["id"] for g in gold}
    report["missing"] = [g["id"] for g in gold if g["id"] not in predicted]
    report["unknown"] = sorted(set(predicted) - ids)
    return report


def _language(pair: dict[str, Any]) -> str:
    """'zh' when either name of a pair holds a CJK character, else 'en'."""
    return "zh" if has_cjk(str(pair["a"]["name"]) + str(pair["b"]["name"])) else "en"


def _decisions(rows: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Accuracy and precision/recall of "same" over (gold, predicted) decisions."""
    hits = sum(g == p for g, p in rows)
    true_same = sum(g and p for g, p in rows)
    said_same = sum(p for _, p in rows)
    gold_same = sum(g for g, _ in rows)
    return {
        "pairs": len(rows), "correct": hits, "accuracy": _rate(hits, len(rows)),
        "gold_same": gold_same, "predicted_same": said_same,
        "precision": _rate(true_same, said_same), "recall": _rate(true_same, gold_same),
        "f1": _rate(2 * true_same, gold_same + said_same),
    }  # fmt: skip


def score_resolution(
    pairs: list[dict[str, Any]], same: Callable[[dict[str, Any], dict[str, Any]], bool]
) -> dict[str, Any]:
    """How well ``same`` decides whether two mentions name one entity.

    Args:
        pairs: resolution pairs (``load_gold``), each ``{"a", "b", "same", "note"}``.
        same: the decision under test, called with the two mentions (``{"name", "type"}``).

    Returns:
        ``{"overall": ..., "en": ..., "zh": ..., "wrong": [pairs]}``: accuracy and the
        precision/recall of "same" (with counts) overall and per language (zh when either name
        holds a CJK character), and each wrongly decided pair with ``"predicted"`` added.
    """
    rows: list[tuple[str, bool, bool]] = []
    wrong: list[dict[str, Any]] = []
    for pair in pairs:
        gold, said = bool(pair["same"]), bool(same(pair["a"], pair["b"]))
        rows.append((_language(pair), gold, said))
        if gold != said:
            wrong.append({**pair, "predicted": said})
    report: dict[str, Any] = {"overall": _decisions([(g, p) for _, g, p in rows])}
    for lang in LANGUAGES:
        report[lang] = _decisions([(g, p) for code, g, p in rows if code == lang])
    report["wrong"] = wrong
    return report


def exact_same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A baseline decision: same normalised name and same type."""
    same_name = normalise(str(a["name"])) == normalise(str(b["name"]))
    return same_name and a.get("type") == b.get("type")
