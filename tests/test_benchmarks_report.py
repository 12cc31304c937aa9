"""Recording a benchmark run into RESULTS.md (``benchmarks/common.py``): a run replaces its own
section and leaves every other one byte for byte, the index follows the sections' summaries,
a new benchmark lands at the end of its part. Pure file manipulation on a copy."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import common  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
WHEN = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    path.write_bytes(RESULTS.read_bytes())
    return path


def spans(doc: str) -> dict[str, str]:
    """Each section's text by key."""
    lines = doc.split("\n")
    return {str(s["key"]): "\n".join(lines[int(s["start"]):int(s["end"])])
            for s in common.sections(doc)}


def index_rows(doc: str) -> dict[str, str]:
    """The index's rows by link text."""
    lines = doc.split("\n")
    body = lines[lines.index(common.INDEX_START) + 1:lines.index(common.INDEX_END)]
    return {r.split("](")[0][3:]: r for r in body if r.startswith("| [")}


TABLE = "| noise | calibrated |\n|---|---:|\n| Gaussian | 0.01 |"


def section(key: str, part: str = "Alerts", headline: str = "0.01 (Gaussian) per 10k",
            body: str = TABLE) -> common.Section:
    return common.Section(key, part, f"A run of {key} (benchmarks/{key}.py)", body,
                          common.Summary(f"{key}.py", "what it measures", headline,
                                         "<= 1 per 10k", "**met**"),
                          command=f"python benchmarks/{key}.py --quick", when=WHEN)


def record(results: Path, sec: common.Section, detail: str = "") -> str:
    common.publish(sec, argparse.Namespace(results=results, no_record=False), detail=detail)
    return results.read_text(encoding="utf-8")


def test_the_results_file_is_addressable_and_its_index_current() -> None:
    doc = RESULTS.read_text(encoding="utf-8")
    found = common.sections(doc)
    keys = [s["key"] for s in found]
    assert len(keys) == len(set(keys)) >= 20
    for s in found:
        assert s["heading"], f"section {s['key']} has no heading"
        assert s["part"] in common.PARTS, s["key"]
        summary = s["summary"]
        assert isinstance(summary, dict)
        assert {"name", "what", "headline", "goal", "met", "date"} <= set(summary), s["key"]
    assert common.rebuild_index(doc) == doc, "the index is not the one the summaries give"


def test_a_run_replaces_its_section_and_leaves_the_others_byte_for_byte(results: Path,
                                                                       capsys) -> None:
    before = results.read_text(encoding="utf-8")
    sec = section("calibration")
    after = record(results, sec)
    old, new = spans(before), spans(after)
    assert list(old) == list(new)                       # same sections, same order
    assert new["calibration"].rstrip("\n") == sec.render().rstrip("\n")
    assert "| Student-t(3) | 69.74 | 2.84 |" not in after   # the previous figures are gone
    for key in old:
        if key != "calibration":
            assert new[key] == old[key], key
    # the text around the sections (title, notes, part headings) is untouched
    head = before[:before.index(common.INDEX_START)]
    assert after.startswith(head)
    # the index row follows the new summary; every other row stays
    rows_before, rows_after = index_rows(before), index_rows(after)
    assert "0.01 (Gaussian) per 10k" in rows_after["calibration.py"]
    assert "2026-12-07" in rows_after["calibration.py"]
    assert {k: v for k, v in rows_after.items() if k != "calibration.py"} == \
        {k: v for k, v in rows_before.items() if k != "calibration.py"}
    assert common.rebuild_index(after) == after
    assert "section 'calibration' written" in capsys.readouterr().out


def test_recording_twice_gives_the_same_file(results: Path) -> None:
    once = record(results, section("drift_scale"))
    assert record(results, section("drift_scale")) == once


def test_a_new_benchmark_lands_at_the_end_of_its_part(results: Path) -> None:
    before = results.read_text(encoding="utf-8")
    after = record(results, section("brand_new", part="Live stream processing",
                                    headline="42 readings/s"))
    found = common.sections(after)
    keys = [s["key"] for s in found]
    live = [s["key"] for s in found if s["part"] == "Live stream processing"]
    assert live[-1] == "brand_new"
    assert keys.index("brand_new") == len(live) - 1     # before the next part's sections
    old = spans(before)
    assert all(spans(after)[k] == v for k, v in old.items())
    rows = list(index_rows(after))
    assert rows.index("brand_new.py") == len(live) - 1
    lines = after.split("\n")
    at = next(int(s["end"]) for s in found if s["key"] == "brand_new")
    assert lines[at:at + 3] == ["---", "", "# Forecasting accuracy"]


def test_a_new_part_is_added_at_the_end(results: Path) -> None:
    after = record(results, section("odd", part="Odd ones"))
    assert after.endswith("# Odd ones\n\n" + section("odd", part="Odd ones").render())
    assert common.sections(after)[-1]["part"] == "Odd ones"
    assert "| **Odd ones** |" in after


def test_no_record_writes_nothing(results: Path, tmp_path: Path) -> None:
    before = results.read_bytes()
    common.publish(section("calibration"), argparse.Namespace(results=results, no_record=True),
                   detail="| a |\n|---|\n| 1 |")
    assert results.read_bytes() == before
    assert not (tmp_path / "history").exists()


def test_the_detail_goes_to_the_history_beside_the_results(results: Path, tmp_path: Path
                                                           ) -> None:
    record(results, section("calibration"), detail="| cost | ms |\n|---|---:|\n| 200 | 6.4 |")
    record(results, section("nab"), detail="every stream")
    hist = (tmp_path / "history" / "detail.md").read_text(encoding="utf-8")
    assert hist.startswith("# Detail of the runs recorded in RESULTS.md")
    assert hist.index("## A run of calibration") < hist.index("## A run of nab")
    assert "| 200 | 6.4 |" in hist and "every stream" in hist
    assert "| 200 | 6.4 |" not in results.read_text(encoding="utf-8")


def test_a_fenced_hash_line_does_not_end_a_section() -> None:
    sec = section("fenced", body="Runs:\n\n```\n# not a part heading\n---\n```\n\nlast line")
    doc = common.replace_section("# Alerts\n", "fenced", "Alerts", sec.render())
    doc = common.replace_section(doc, "later", "Alerts", section("later").render())
    text = spans(doc)["fenced"]
    assert "last line" in text and "A run of later" not in text


def test_recorded_rows_are_keyed_by_their_first_cells(results: Path) -> None:
    def cell(key: str, first: str, col: int) -> str:
        """A table cell of the recorded section, read the plain way (the file changes as
        benchmarks are re-run: the values are not fixed here)."""
        text = spans(results.read_text())[key]
        line = next(ln for ln in text.split("\n") if ln.startswith(f"| {first} |"))
        return line.strip("|").split("|")[col].strip()

    rows = common.recorded_rows(results, "scaling")
    assert [k[0] for k in rows] == ["200", "2,000", "10,000", "50,000"]
    assert rows[("10,000",)][2] == cell("scaling", "10,000", 2)
    assert common.number(rows[("10,000",)][2]) > 1000
    by_pair = common.recorded_rows(results, "drift_scale", n_key=2)
    assert by_pair[("10,000", "page_hinkley")][8] == cell("drift_scale",
                                                          "10,000 | page_hinkley", 8)
    assert common.recorded_rows(results, "no_such_benchmark") == {}


def test_a_summary_cannot_break_its_marker() -> None:
    sec = section("x", headline="a --> b")
    with pytest.raises(ValueError):
        sec.render()
    marker = section("x").render().split("\n")[0]
    assert json.loads(marker[len("<!-- bench:x "):-len(" -->")])["date"] == "2026-12-07"


def test_flags_and_tables() -> None:
    ap = common.parser("A benchmark.\n\nMore text.")
    common.add_data_dir(ap)
    common.add_jobs(ap)
    common.add_overrides(ap)
    ap.add_argument("--seeds", type=common.int_list, default="1,2,3")
    args = ap.parse_args(["--no-record", "--set", "a.b=1", "--seeds", "4,5"])
    assert args.no_record and args.results == common.RESULTS and args.jobs == 2
    assert args.seeds == [4, 5] and args.set == ["a.b=1"]
    assert ap.parse_args([]).seeds == [1, 2, 3]
    assert ap.description == "A benchmark."
    assert common.md_table(["a", "b"], [(1, "x")]) == ["| a | b |", "|---|---:|", "| 1 | x |"]
    with pytest.raises(ValueError):
        common.md_table(["a", "b"], [(1,)])
