"""Tests for `ontask.selection.run_select` on small hand-written scored files.

Every expected outcome is worked out by hand from the rows written in each test, so the
assertions are exact: which rows are kept (by line), their `rank`, which rows are dropped
and with which reason kind, and the counts in select.json.
"""

from __future__ import annotations

import json
from ontask.runs import side_file
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from ontask.selection import SelectConfig, run_select

# Ten scored rows. tss by line (1-based):
#   line:  1    2    3     4    5    6    7    8    9    10
#   tss:  0.3  0.9 -0.2   0.5  0.1  0.8  0.0  0.7  0.4  -0.5
# Best five by tss: line 2 (0.9), 6 (0.8), 8 (0.7), 4 (0.5), 9 (0.4).
TSS = [0.3, 0.9, -0.2, 0.5, 0.1, 0.8, 0.0, 0.7, 0.4, -0.5]
# ppl by line: lowest three are line 7 (1.5), 3 (2.0), 10 (2.5).
PPL = [4.0, 9.0, 2.0, 6.0, 3.0, 8.0, 1.5, 7.0, 5.0, 2.5]
TOKENS = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


def make_rows(tss=TSS, ppl=PPL, tokens=TOKENS, **columns: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for i, (t, p, n) in enumerate(zip(tss, ppl, tokens)):
        row = {
            "instruction": f"Instruction number {i + 1}.",
            "input": f"input {i + 1}" if i % 2 else "",
            "output": f"Output number {i + 1}.",
            "id": f"row-{i + 1}",
            "meta": {"source": "hand", "n": i + 1, "tags": ["a", "b"]},
            "tss": t,
            "tss_pp": -t,
            "ifd": 0.5,
            "ppl": p,
            "tokens": n,
        }
        for name, values in columns.items():
            row[name] = values[i]
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = []
    for row in rows:
        lines.append(row if isinstance(row, str) else json.dumps(row))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Result:
    def __init__(self, out: Path, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.kept = read_jsonl(out)
        self.dropped = read_jsonl(side_file(out, "dropped.jsonl"))
        self.select_json = json.loads((side_file(out, "select.json")).read_text(encoding="utf-8"))

    @property
    def kept_ids(self) -> list[str]:
        return [r["id"] for r in self.kept]

    @property
    def ranks(self) -> dict[str, int]:
        return {r["id"]: r["rank"] for r in self.kept}

    @property
    def dropped_kinds(self) -> dict[int, str]:
        return {d["line"]: d["reason"] for d in self.dropped}


def select(tmp_path: Path, rows: list[Any], embedder: Any = None, **cfg: Any) -> Result:
    src = write_jsonl(tmp_path / "scored.jsonl", rows)
    out = tmp_path / "sel" / "top.jsonl"
    manifest = run_select(src, out, SelectConfig(**cfg), embedder=embedder)
    return Result(out, manifest)


def check_accounting(res: Result, n_rows: int) -> None:
    """kept + dropped == rows; each line is kept or dropped, never both; reasons add up."""
    c = res.select_json["counts"]
    assert c["rows"] == n_rows
    assert c["kept"] == len(res.kept)
    assert c["dropped"] == len(res.dropped)
    assert c["kept"] + c["dropped"] == n_rows
    assert sum(res.select_json["dropped_by_reason"].values()) == c["dropped"]
    by_kind: dict[str, int] = {}
    for d in res.dropped:
        by_kind[d["reason"]] = by_kind.get(d["reason"], 0) + 1
    assert by_kind == res.select_json["dropped_by_reason"]
    dropped_lines = [d["line"] for d in res.dropped]
    assert len(set(dropped_lines)) == len(dropped_lines)
    assert res.manifest["counts"] == c


# --- budgets ---------------------------------------------------------------------------


def test_retain_half_keeps_best_five_in_file_order_with_ranks(tmp_path):
    rows = make_rows()
    res = select(tmp_path, rows, by="tss", retain=0.5)
    # File order, not score order.
    assert res.kept_ids == ["row-2", "row-4", "row-6", "row-8", "row-9"]
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3, "row-4": 4, "row-9": 5}
    by_rank = sorted(res.kept, key=lambda r: r["rank"])
    assert [r["tss"] for r in by_rank] == [0.9, 0.8, 0.7, 0.5, 0.4]
    assert res.dropped_kinds == {1: "over budget", 3: "over budget", 5: "over budget",
                                 7: "over budget", 10: "over budget"}
    assert {d["line"]: d["score"] for d in res.dropped} == {1: 0.3, 3: -0.2, 5: 0.1, 7: 0.0, 10: -0.5}
    assert res.select_json["cutoff_score"] == 0.4
    assert res.select_json["counts"]["kept_tokens"] == 12 + 14 + 16 + 18 + 19
    check_accounting(res, 10)


def test_every_input_field_is_kept_verbatim(tmp_path):
    rows = make_rows()
    res = select(tmp_path, rows, retain=0.5)
    originals = {r["id"]: r for r in rows}
    for kept in res.kept:
        rank = kept.pop("rank")
        assert isinstance(rank, int)
        assert kept == originals[kept["id"]]
        assert list(kept) == list(originals[kept["id"]])  # column order kept too


def test_ties_are_broken_by_the_earlier_row(tmp_path):
    # line 2 is best; lines 1, 3, 4 tie at 0.5; line 5 is worst.
    tss = [0.5, 0.9, 0.5, 0.5, 0.1]
    rows = make_rows(tss=tss, ppl=PPL[:5], tokens=TOKENS[:5])
    res = select(tmp_path, rows, retain=0.4)  # 2 of 5
    assert res.ranks == {"row-2": 1, "row-1": 2}
    res = select(tmp_path, rows, retain=0.6)  # 3 of 5
    assert res.ranks == {"row-2": 1, "row-1": 2, "row-3": 3}
    assert res.dropped_kinds == {4: "over budget", 5: "over budget"}


def test_ties_broken_by_earlier_row_when_lower_is_better(tmp_path):
    ppl = [3.0, 1.0, 3.0, 3.0, 9.0]
    rows = make_rows(tss=TSS[:5], ppl=ppl, tokens=TOKENS[:5])
    res = select(tmp_path, rows, by="ppl", retain=0.6)
    assert res.ranks == {"row-2": 1, "row-1": 2, "row-3": 3}


def test_by_ppl_keeps_the_lowest_perplexities(tmp_path):
    res = select(tmp_path, make_rows(), by="ppl", retain=0.3)
    assert res.kept_ids == ["row-3", "row-7", "row-10"]
    assert res.ranks == {"row-7": 1, "row-3": 2, "row-10": 3}
    assert res.select_json["cutoff_score"] == 2.5
    check_accounting(res, 10)


def test_by_tss_pp_reads_the_tss_pp_column(tmp_path):
    # tss_pp = -tss, so the best by tss++ are the worst by tss: lines 10, 3, 7.
    res = select(tmp_path, make_rows(), by="tss++", retain=0.3)
    assert res.ranks == {"row-10": 1, "row-3": 2, "row-7": 3}


def test_max_tokens_fills_the_budget_exactly(tmp_path):
    # Rank order by tss: lines 2, 6, 8, 4, 9, 1, 5, 7, 3, 10.
    # tokens in that order: 20, 30, 40, 50, ...  budget 90 = 20 + 30 + 40 exactly.
    tokens = [60, 20, 100, 50, 70, 30, 80, 40, 55, 90]
    res = select(tmp_path, make_rows(tokens=tokens), max_tokens=90)
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3}
    assert res.select_json["counts"]["kept_tokens"] == 90
    assert set(res.dropped_kinds.values()) == {"over budget"}
    check_accounting(res, 10)
    # One token less: the third row no longer fits.
    res = select(tmp_path, make_rows(tokens=tokens), max_tokens=89)
    assert res.ranks == {"row-2": 1, "row-6": 2}
    assert res.select_json["counts"]["kept_tokens"] == 50


def test_max_tokens_stops_at_the_first_row_that_would_exceed(tmp_path):
    # Rank order by tss: lines 2, 6, 8, 4, 9, ...; tokens 20, 30, 40, 50, 5, ...
    # Budget 95: 20+30+40 = 90 kept; line 4 (50) would exceed -> stop. Line 9 (5 tokens,
    # lower-ranked) must not be kept in its place.
    tokens = [60, 20, 100, 50, 70, 30, 80, 40, 5, 90]
    res = select(tmp_path, make_rows(tokens=tokens), max_tokens=95)
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3}
    assert res.select_json["counts"]["kept_tokens"] == 90
    # No dropped row scores above the cut-off.
    assert all(d["score"] < res.select_json["cutoff_score"] for d in res.dropped)


def test_max_tokens_drops_rows_without_tokens(tmp_path):
    rows = make_rows()
    del rows[1]["tokens"]  # line 2, the best row
    rows[5]["tokens"] = "sixteen"  # line 6, not numeric (numeric text, as CSV carries numbers, counts)
    res = select(tmp_path, rows, max_tokens=1000)
    assert res.dropped_kinds == {2: "no tokens", 6: "no tokens"}
    assert len(res.kept) == 8
    check_accounting(res, 10)


def test_retain_one_keeps_everything(tmp_path):
    res = select(tmp_path, make_rows(), retain=1.0)
    assert len(res.kept) == 10 and res.dropped == []
    assert sorted(r["rank"] for r in res.kept) == list(range(1, 11))
    check_accounting(res, 10)


# --- filters ---------------------------------------------------------------------------


def test_ifd_max_drops_rows_above_it(tmp_path):
    ifd = [0.4, 1.2, 0.9, 1.0, 3.0, 0.2, 0.8, 1.0001, 0.7, 0.6]
    rows = make_rows(ifd=ifd)
    res = select(tmp_path, rows, retain=1.0, ifd_max=1)
    # IFD 1.0 exactly is kept (<= 1); 1.2, 3.0 and 1.0001 are dropped.
    assert res.dropped_kinds == {2: "ifd above max", 5: "ifd above max", 8: "ifd above max"}
    assert res.kept_ids == ["row-1", "row-3", "row-4", "row-6", "row-7", "row-9", "row-10"]
    assert res.select_json["dropped_by_reason"] == {"ifd above max": 3}
    check_accounting(res, 10)


def test_ifd_filter_runs_before_the_budget(tmp_path):
    # Lines 2 and 6 (the two best by tss) have IFD > 1: the five kept are the next five.
    ifd = [0.5, 1.5, 0.5, 0.5, 0.5, 1.1, 0.5, 0.5, 0.5, 0.5]
    res = select(tmp_path, make_rows(ifd=ifd), retain=0.5, ifd_max=1.0)
    assert res.ranks == {"row-8": 1, "row-4": 2, "row-9": 3, "row-1": 4, "row-5": 5}
    assert res.dropped_kinds == {2: "ifd above max", 6: "ifd above max",
                                 3: "over budget", 7: "over budget", 10: "over budget"}
    check_accounting(res, 10)


def test_ifd_max_drops_rows_without_ifd(tmp_path):
    rows = make_rows()
    del rows[2]["ifd"]
    res = select(tmp_path, rows, retain=1.0, ifd_max=1.0)
    assert res.dropped_kinds == {3: "no ifd"}


def test_ppl_percentile_bounds(tmp_path):
    # ppl 1..10 (shuffled). np.percentile (linear): 10th -> 1.9, 80th -> 8.2.
    ppl = [5.0, 1.0, 9.0, 3.0, 10.0, 2.0, 8.0, 4.0, 7.0, 6.0]
    res = select(tmp_path, make_rows(ppl=ppl), retain=1.0, ppl_min_pct=10, ppl_max_pct=80)
    assert res.dropped_kinds == {2: "ppl below bound", 3: "ppl above bound", 5: "ppl above bound"}
    assert res.kept_ids == ["row-1", "row-4", "row-6", "row-7", "row-8", "row-9", "row-10"]
    assert res.select_json["ppl_bounds"] == pytest.approx({"ppl_low": 1.9, "ppl_high": 8.2})
    check_accounting(res, 10)


def test_ppl_upper_bound_only(tmp_path):
    ppl = [5.0, 1.0, 9.0, 3.0, 10.0, 2.0, 8.0, 4.0, 7.0, 6.0]
    res = select(tmp_path, make_rows(ppl=ppl), retain=1.0, ppl_max_pct=50)  # median 5.5
    assert res.dropped_kinds == {3: "ppl above bound", 5: "ppl above bound", 7: "ppl above bound",
                                 9: "ppl above bound", 10: "ppl above bound"}


# --- rows that cannot be ranked --------------------------------------------------------


def test_rows_without_a_numeric_score_are_dropped_not_kept(tmp_path):
    rows = make_rows()
    del rows[1]["tss"]  # line 2: missing (it was the best)
    rows[3]["tss"] = "high"  # line 4: text that is not a number ("0.5", as CSV carries it, would count)
    rows[5]["tss"] = None  # line 6: null
    rows[7]["tss"] = True  # line 8: a bool is not a score
    rows[8]["tss"] = math.nan  # line 9: NaN (json writes NaN, Python reads it back)
    res = select(tmp_path, rows, retain=1.0)
    assert res.dropped_kinds == {2: "no score", 4: "no score", 6: "no score", 8: "no score", 9: "no score"}
    assert all(d["score"] is None for d in res.dropped)
    assert res.kept_ids == ["row-1", "row-3", "row-5", "row-7", "row-10"]
    assert res.ranks == {"row-1": 1, "row-5": 2, "row-7": 3, "row-3": 4, "row-10": 5}
    check_accounting(res, 10)


def test_unreadable_lines_are_reported_and_counted(tmp_path):
    rows: list[Any] = make_rows()
    rows.insert(3, '{"instruction": "broken", "tss": ')  # line 4
    rows.insert(6, "[1, 2, 3]")  # line 7: not an object
    res = select(tmp_path, rows, retain=0.5)  # 12 rows (10 readable) -> keeps 6
    assert res.dropped_kinds[4] == "unreadable"
    assert res.dropped_kinds[7] == "unreadable"
    check_accounting(res, 12)
    assert res.select_json["counts"]["rows"] == 12


def test_score_of_an_int_is_accepted(tmp_path):
    rows = make_rows(tss=[3, 9, -2, 5, 1, 8, 0, 7, 4, -5])
    res = select(tmp_path, rows, retain=0.5)
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3, "row-4": 4, "row-9": 5}


# --- diversity guard -------------------------------------------------------------------


class FakeEmbedder:
    """Returns hand-chosen unit vectors per instruction; records what it was asked."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vectors[t] for t in texts])


def diversity_rows() -> list[dict[str, Any]]:
    # Line 1 is the lower-scored near duplicate of line 3, and comes first in the file.
    spec = [
        ("Summarise this article in one sentence.", 0.6),
        ("Translate the text into German.", 0.4),
        ("Summarise the article in one sentence.", 0.9),
        ("Write a poem about the sea.", 0.2),
    ]
    return [
        {"instruction": ins, "input": "", "output": f"out {i}", "id": f"row-{i + 1}",
         "tss": s, "ppl": 2.0, "ifd": 0.5, "tokens": 10}
        for i, (ins, s) in enumerate(spec)
    ]


DIVERSITY_VECTORS = {
    "Summarise this article in one sentence.": [1.0, 0.05, 0.0],  # cosine ~0.9988 to line 3
    "Summarise the article in one sentence.": [1.0, 0.0, 0.0],
    "Translate the text into German.": [0.0, 1.0, 0.0],
    "Write a poem about the sea.": [0.6, 0.0, 0.8],  # cosine 0.6 to line 3: kept
}


def test_diversity_keeps_only_the_higher_scored_near_duplicate(tmp_path):
    fake = FakeEmbedder(DIVERSITY_VECTORS)
    res = select(tmp_path, diversity_rows(), embedder=fake, retain=1.0, diversity=0.9)
    assert res.kept_ids == ["row-2", "row-3", "row-4"]
    assert res.ranks == {"row-3": 1, "row-2": 2, "row-4": 3}
    assert res.dropped_kinds == {1: "near duplicate"}
    assert "line 3" in res.dropped[0]["detail"]  # points at the kept row it duplicates
    assert res.select_json["dropped_by_reason"] == {"near duplicate": 1}
    embedded = [t for call in fake.calls for t in call]
    assert set(embedded) == set(DIVERSITY_VECTORS)
    check_accounting(res, 4)


def test_diversity_threshold_above_the_similarity_keeps_both(tmp_path):
    fake = FakeEmbedder(DIVERSITY_VECTORS)
    res = select(tmp_path, diversity_rows(), embedder=fake, retain=1.0, diversity=0.999)
    assert res.kept_ids == ["row-1", "row-2", "row-3", "row-4"]


def test_diversity_under_a_row_budget(tmp_path):
    # retain 0.5 of 4 = 2 rows: line 3 (0.9), then line 1 is a near duplicate, so line 2 (0.4).
    fake = FakeEmbedder(DIVERSITY_VECTORS)
    res = select(tmp_path, diversity_rows(), embedder=fake, retain=0.5, diversity=0.9)
    assert res.ranks == {"row-3": 1, "row-2": 2}
    assert res.dropped_kinds == {1: "near duplicate", 4: "over budget"}
    check_accounting(res, 4)


# --- configuration ---------------------------------------------------------------------


def test_config_needs_exactly_one_budget():
    with pytest.raises(ValidationError, match="exactly one budget"):
        SelectConfig()
    with pytest.raises(ValidationError, match="exactly one budget"):
        SelectConfig(retain=0.5, max_tokens=1000)
    SelectConfig(retain=0.5)
    SelectConfig(max_tokens=1000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retain": 0},
        {"retain": 1.5},
        {"retain": -0.1},
        {"max_tokens": 0},
        {"retain": 0.5, "by": "bogus"},
        {"retain": 0.5, "ppl_min_pct": 101},
        {"retain": 0.5, "diversity": 0},
        {"retain": 0.5, "unknown_setting": 1},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValidationError):
        SelectConfig(**kwargs)


def test_lower_is_better_columns_sort_ascending():
    assert SelectConfig(retain=0.1, by="ppl").descending is False
    assert SelectConfig(retain=0.1, by="ifd").descending is False
    assert SelectConfig(retain=0.1, by="tss").descending is True
    assert SelectConfig(retain=0.1, by="tss++").column == "tss_pp"


def _strict_json(text: str) -> Any:
    def reject(name: str) -> Any:
        raise ValueError(f"not valid JSON: {name}")

    return json.loads(text, parse_constant=reject)


def test_select_json_is_strict_json_with_one_ppl_bound(tmp_path):
    res = select(tmp_path, make_rows(), retain=1.0, ppl_max_pct=50)
    _strict_json((tmp_path / "sel" / "top.select.json").read_text(encoding="utf-8"))
    assert res.select_json["ppl_bounds"]["ppl_high"] == pytest.approx(4.5)  # median of PPL


def test_select_json_is_strict_json_without_filters(tmp_path):
    select(tmp_path, make_rows(), retain=0.5)
    _strict_json((tmp_path / "sel" / "top.select.json").read_text(encoding="utf-8"))


def test_stratify_keeps_every_group_at_the_budget(tmp_path):
    """Group a scores high, group b low: plain selection keeps only a; --stratify keeps each
    group's share of the budget, ranked within the group, and says so in select.json."""
    import json as _json

    from typer.testing import CliRunner

    from ontask.cli.main import app

    rows = [{"instruction": f"a{i}", "output": "x", "category": "a", "tss": 10.0 - i, "tokens": 10} for i in range(8)]
    rows += [{"instruction": f"b{i}", "output": "x", "category": "b", "tss": 1.0 - i, "tokens": 10} for i in range(4)]
    src = tmp_path / "scored.jsonl"
    src.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    runner = CliRunner()

    def kept(out, *flags):
        res = runner.invoke(app, ["select", str(src), "-o", str(out), "--by", "tss", *flags])
        assert res.exit_code == 0, res.output
        return [_json.loads(x) for x in out.read_text().splitlines()], _json.loads((side_file(out, "select.json")).read_text())

    plain, _ = kept(tmp_path / "plain" / "top.jsonl", "--retain", "0.5")
    assert [r["instruction"] for r in plain] == [f"a{i}" for i in range(6)]
    strat, manifest = kept(tmp_path / "strat" / "top.jsonl", "--retain", "0.5", "--stratify", "category")
    assert [r["instruction"] for r in strat] == ["a0", "a1", "a2", "a3", "b0", "b1"]  # input order kept
    assert [r["rank"] for r in strat] == [1, 2, 3, 4, 5, 6]  # one ranking across groups
    assert manifest["groups"] == {"a": {"rows": 8, "kept": 4}, "b": {"rows": 4, "kept": 2}}
    dropped = [_json.loads(x) for x in (tmp_path / "strat" / "top.dropped.jsonl").read_text().splitlines()]
    assert all("group category='" in d["detail"] for d in dropped) and len(dropped) == 6
    tok, manifest = kept(tmp_path / "tok" / "top.jsonl", "--max-tokens", "30", "--stratify", "category",
                         "--stratify-min", "2")
    assert manifest["groups"]["b"]["kept"] == 2 and manifest["groups"]["a"]["kept"] == 2  # a: 30*8/12 = 20 tokens
    res = runner.invoke(app, ["select", str(src), "-o", str(tmp_path / "x.jsonl"), "--retain", "0.5", "--stratify-min", "1"])
    assert res.exit_code == 2 and "--stratify-min needs --stratify" in res.output


# --- baselines: --by random, --by length, and select.json's "baselines" -------------------

# np.random.default_rng(seed).random(10), the key of each line; highest first:
#   seed 0: [.637 .270 .041 .017 .813 .913 .607 .729 .544 .935] -> lines 10, 6, 5, 8, 1, 7, 9, 2, 3, 4
#   seed 1: [.512 .950 .144 .949 .312 .423 .828 .409 .550 .028] -> lines 2, 4, 7, 9, 1, 6, 8, 5, 3, 10
RANDOM_TOP5 = {0: {"row-10": 1, "row-6": 2, "row-5": 3, "row-8": 4, "row-1": 5},
               1: {"row-2": 1, "row-4": 2, "row-7": 3, "row-9": 4, "row-1": 5}}
# output_tokens by line; longest first: lines 6 (50), 10 (45), 3 (40), 7 (35), 1 (30), 5, 8, 9, 4, 2.
OUTPUT_TOKENS = [30, 5, 40, 10, 25, 50, 35, 20, 15, 45]
# tss in exact binary fractions, so that means compare exactly. Best five: lines 2, 6, 8, 4, 9.
TSS_EXACT = [0.25, 2.0, -0.5, 1.0, 0.0, 1.5, -0.25, 1.25, 0.5, -1.0]


def unscored_rows() -> list[dict[str, Any]]:
    """Raw rows, no score columns: Alpaca, Dolly and chat layouts, outputs of known lengths."""
    return [
        {"instruction": "a", "input": "", "output": "x" * 7, "id": "row-1"},
        {"instruction": "b", "context": "", "response": "y" * 30, "id": "row-2"},
        {"messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "z" * 12}], "id": "row-3"},
        {"instruction": "d", "input": "", "output": "w" * 3, "id": "row-4"},
    ]


def test_random_selection_is_seeded_and_reproducible(tmp_path):
    first = select(tmp_path, make_rows(), by="random", retain=0.5)
    assert first.ranks == RANDOM_TOP5[0]
    assert first.kept_ids == ["row-1", "row-5", "row-6", "row-8", "row-10"]  # file order
    again = select(tmp_path, make_rows(), by="random", retain=0.5, seed=0)
    assert again.ranks == first.ranks
    other = select(tmp_path, make_rows(), by="random", retain=0.5, seed=1)
    assert other.ranks == RANDOM_TOP5[1]
    assert list(other.dropped_kinds.values()) == ["over budget"] * 5
    check_accounting(other, 10)


def test_random_selection_ignores_the_scores(tmp_path):
    # Scores reversed: a random order does not move.
    res = select(tmp_path, make_rows(tss=[-t for t in TSS]), by="random", retain=0.5)
    assert res.ranks == RANDOM_TOP5[0]


def test_random_selection_under_a_token_budget_and_stratified(tmp_path):
    # Tokens 11..20 by line. Seed 0 order: 10 (20), 6 (16), 5 (15) -> 51 > 50: lines 10, 6.
    res = select(tmp_path, make_rows(), by="random", max_tokens=50)
    assert res.ranks == {"row-10": 1, "row-6": 2}
    assert res.select_json["counts"]["kept_tokens"] == 36
    # Lines 1-5 in group a, 6-10 in b; 2 rows each. a by key: 5, 1, ...; b: 10, 6, ...
    groups = ["a"] * 5 + ["b"] * 5
    res = select(tmp_path, make_rows(category=groups), by="random", retain=0.4, stratify="category")
    assert set(res.ranks) == {"row-5", "row-1", "row-10", "row-6"}
    assert res.select_json["groups"] == {"a": {"rows": 5, "kept": 2}, "b": {"rows": 5, "kept": 2}}


def test_by_random_works_on_unscored_rows(tmp_path):
    # Keys for 4 rows, seed 0: [.637 .270 .041 .017] -> lines 1, 2.
    res = select(tmp_path, unscored_rows(), by="random", retain=0.5)
    assert res.ranks == {"row-1": 1, "row-2": 2}
    assert res.dropped_kinds == {3: "over budget", 4: "over budget"}
    # The length baseline ranks them by characters: 30 (line 2), 12 (line 3); the means
    # compared are of the random keys, the selection's "score".
    key = np.random.default_rng(0).random(4)
    assert res.select_json["baselines"] == {"length": {
        "kept": 2, "kept_tokens": 0, "mean_score": float(key[[1, 2]].mean()),
        "selection_mean_score": float(key[[0, 1]].mean()), "common": 1, "overlap": 0.5}}
    check_accounting(res, 4)


def test_by_random_on_unscored_rows_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from ontask.cli.main import app

    src = write_jsonl(tmp_path / "raw.jsonl", unscored_rows())
    out = tmp_path / "sel" / "top.jsonl"
    res = CliRunner().invoke(app, ["select", str(src), "-o", str(out), "--by", "random", "--seed", "1", "--retain", "0.5"])
    assert res.exit_code == 0, res.output
    # Seed 1, 4 rows: keys [.512 .950 .144 .949] -> lines 2, 4.
    assert [r["id"] for r in read_jsonl(out)] == ["row-2", "row-4"]
    assert json.loads(side_file(out, "select.json").read_text())["config"]["seed"] == 1
    res = CliRunner().invoke(app, ["select", str(src), "-o", str(out), "--by", "random", "--max-tokens", "100"])
    assert res.exit_code == 2
    assert "--max-tokens counts each row's 'tokens' column" in res.output and "--retain" in res.output


def test_by_length_keeps_the_longest_outputs(tmp_path):
    res = select(tmp_path, make_rows(output_tokens=OUTPUT_TOKENS), by="length", retain=0.3)
    assert res.ranks == {"row-6": 1, "row-10": 2, "row-3": 3}
    assert res.select_json["cutoff_score"] == 40
    assert {d["line"]: d["score"] for d in res.dropped} == {1: 30, 2: 5, 4: 10, 5: 25, 7: 35, 8: 20, 9: 15}
    check_accounting(res, 10)


def test_by_length_counts_characters_when_rows_are_unscored(tmp_path):
    rows = unscored_rows() + [{"instruction": "e", "answer": "no known output column", "id": "row-5"}]
    res = select(tmp_path, rows, by="length", retain=0.4)  # 2 of 5
    assert res.ranks == {"row-2": 1, "row-3": 2}  # 30 and 12 characters
    assert res.dropped_kinds == {1: "over budget", 4: "over budget", 5: "no length"}
    check_accounting(res, 5)
    with pytest.raises(ValueError, match="none of its 1 rows has an output length"):
        select(tmp_path, rows[4:], by="length", retain=0.5)


def test_baselines_at_the_same_row_budget(tmp_path):
    res = select(tmp_path, make_rows(tss=TSS_EXACT, output_tokens=OUTPUT_TOKENS), by="tss", retain=0.5)
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3, "row-4": 4, "row-9": 5}  # mean tss 6.25 / 5
    assert res.select_json["baselines"] == {
        # seed 0: lines 10, 6, 5, 8, 1; tss -1 + 1.5 + 0 + 1.25 + 0.25 = 2; tokens 20+16+15+18+11.
        "random": {"kept": 5, "kept_tokens": 80, "mean_score": 0.4, "selection_mean_score": 1.25,
                   "common": 2, "overlap": 0.4},
        # longest: lines 6, 10, 3, 7, 1; tss 1.5 - 1 - 0.5 - 0.25 + 0.25 = 0; tokens 16+20+13+17+11.
        "length": {"kept": 5, "kept_tokens": 77, "mean_score": 0.0, "selection_mean_score": 1.25,
                   "common": 1, "overlap": 0.2},
    }
    assert res.manifest["baselines"] == res.select_json["baselines"]


def test_baselines_at_the_same_token_budget(tmp_path):
    # Budget 50, tokens 11..20 by line. tss: lines 2 (12), 6 (16), 8 (18) = 46, line 4 would exceed.
    # random: 10 (20), 6 (16) = 36, line 5 (15) would exceed. length: 6, 10, 3 = 49, line 7 would exceed.
    res = select(tmp_path, make_rows(tss=TSS_EXACT, output_tokens=OUTPUT_TOKENS), by="tss", max_tokens=50)
    assert res.select_json["counts"]["kept_tokens"] == 46
    assert res.select_json["baselines"] == {
        "random": {"kept": 2, "kept_tokens": 36, "mean_score": 0.25, "selection_mean_score": 4.75 / 3,
                   "common": 1, "overlap": 0.5},
        "length": {"kept": 3, "kept_tokens": 49, "mean_score": 0.0, "selection_mean_score": 4.75 / 3,
                   "common": 1, "overlap": 1 / 3},
    }


def test_baselines_share_the_stratified_budget(tmp_path):
    # Lines 1-5 in a, 6-10 in b, 2 rows each. tss keeps 2, 4 | 6, 8 (mean 5.75 / 4).
    # random (seed 0) keeps 5, 1 | 10, 6: tss 0 + 0.25 - 1 + 1.5 = 0.75. length keeps 3, 1 | 6, 10: 0.25.
    rows = make_rows(tss=TSS_EXACT, output_tokens=OUTPUT_TOKENS, category=["a"] * 5 + ["b"] * 5)
    res = select(tmp_path, rows, by="tss", retain=0.4, stratify="category")
    assert res.ranks == {"row-2": 1, "row-6": 2, "row-8": 3, "row-4": 4}
    assert res.select_json["baselines"] == {
        "random": {"kept": 4, "kept_tokens": 15 + 11 + 20 + 16, "mean_score": 0.1875,
                   "selection_mean_score": 1.4375, "common": 1, "overlap": 0.25},
        "length": {"kept": 4, "kept_tokens": 13 + 11 + 16 + 20, "mean_score": 0.0625,
                   "selection_mean_score": 1.4375, "common": 1, "overlap": 0.25},
    }


def test_baselines_draw_from_the_rows_past_the_filters(tmp_path):
    # Line 10 (IFD 2) is filtered out: random keeps 6, 5, 8, 1, 7 instead, length 6, 3, 7, 1, 5.
    ifd = [0.5] * 9 + [2.0]
    res = select(tmp_path, make_rows(tss=TSS_EXACT, output_tokens=OUTPUT_TOKENS, ifd=ifd), by="tss",
                 retain=0.5, ifd_max=1.0)
    b = res.select_json["baselines"]
    assert (b["random"]["mean_score"], b["random"]["common"]) == (0.55, 2)  # 2.75 / 5
    assert (b["length"]["mean_score"], b["length"]["common"]) == (0.2, 1)  # 1.0 / 5


def test_baselines_leave_out_the_order_selected_by(tmp_path):
    res = select(tmp_path, make_rows(tss=TSS_EXACT, output_tokens=OUTPUT_TOKENS), by="length", retain=0.5)
    assert set(res.select_json["baselines"]) == {"random"}
    # The random baseline's mean output length against the selection's: (20+50+25+45+30)/5 vs 44.
    assert res.select_json["baselines"]["random"]["mean_score"] == 34.0
    assert res.select_json["baselines"]["random"]["selection_mean_score"] == 40.0  # 50+45+40+35+30


def test_config_takes_the_baseline_orders():
    assert SelectConfig(retain=0.5, by="random").seed == 0
    assert SelectConfig(retain=0.5, by="length", seed=3).column == "length"
    with pytest.raises(ValidationError, match="random, length"):
        SelectConfig(retain=0.5, by="longest")


def _stratified(tmp_path, rows, *flags):
    import json as _json

    from typer.testing import CliRunner

    from ontask.cli.main import app

    src = tmp_path / "scored.jsonl"
    src.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "s" / "top.jsonl"
    res = CliRunner().invoke(app, ["select", str(src), "-o", str(out), "--by", "tss", "--stratify", "category", *flags])
    assert res.exit_code == 0, res.output
    return [_json.loads(x) for x in out.read_text().splitlines()], _json.loads(side_file(out, "select.json").read_text())


def test_stratified_shares_add_up_to_the_budget_by_largest_remainder(tmp_path):
    """Many small groups: the row budget is apportioned (whole quotas, then the largest
    remainders), so a stratified selection keeps exactly the budget, as a plain one does,
    instead of one row a group whatever the budget."""
    sizes = {"g1": 10, "g2": 2, **{f"s{i}": 1 for i in range(8)}}  # 20 rows; --retain 0.25: 5 rows
    rows = [{"instruction": f"{g}-{j}", "output": "x", "category": g, "tss": float(-j), "tokens": 1}
            for g, n in sizes.items() for j in range(n)]
    kept, manifest = _stratified(tmp_path, rows, "--retain", "0.25")
    assert len(kept) == 5 == manifest["counts"]["kept"]
    # quotas g1 2.5, g2 0.5, s* 0.25: g1 2 + 1 (remainder .5, larger group first), g2 1, s0 1 (name order)
    assert {g: c["kept"] for g, c in manifest["groups"].items() if c["kept"]} == {"g1": 3, "g2": 1, "s0": 1}


def test_a_groups_unspent_token_share_goes_to_the_best_rows_left(tmp_path):
    """Group b's share (20 of 60 tokens) cannot pay for its best row (30 tokens): the 20 go to
    the best rows left in any group, in rank order, so the budget is spent as a plain one is."""
    rows = [{"instruction": f"a{i}", "output": "x", "category": "a", "tss": 10.0 - i, "tokens": 10} for i in range(8)]
    rows += [{"instruction": f"b{i}", "output": "x", "category": "b", "tss": 1.0 - i, "tokens": 30} for i in range(4)]
    kept, manifest = _stratified(tmp_path, rows, "--max-tokens", "60")
    assert [r["instruction"] for r in kept] == [f"a{i}" for i in range(6)]
    assert manifest["counts"]["kept_tokens"] == 60
    kept, manifest = _stratified(tmp_path, rows, "--max-tokens", "60", "--stratify-min", "1")
    assert [r["instruction"] for r in kept] == ["a0", "a1", "a2", "a3", "b0"]  # b's one row whatever it costs
    assert manifest["counts"]["kept_tokens"] == 70
