"""Issue 16.10-12: what every report says in every format, at every width, and its charts."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from report_data import KINDS, build_showcase

from analysis.load import open_source
from analysis.report import render
from analysis.report.text import fmt, fmt_p

REPO = Path(__file__).resolve().parents[2]


def _analyze(con: Any, kind: str) -> dict[str, Any]:
    if kind == "divergence":
        from analysis.divergence import analyze_divergence

        return analyze_divergence(con).to_dict()
    if kind == "experiment":
        from analysis.experiment import analyze_experiments

        return analyze_experiments(con).to_dict()
    if kind == "drift":
        from analysis.drift import analyze_drift

        return analyze_drift(con).to_dict()
    if kind == "quality":
        from analysis.quality import analyze_quality

        return analyze_quality(con).to_dict()
    from analysis.field_diff import analyze_field_diff

    return analyze_field_diff(con).to_dict()


@pytest.fixture(scope="module")
def showcase(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_showcase(tmp_path_factory.mktemp("showcase") / "show.duckdb")


@pytest.fixture(scope="module")
def reports(showcase: Path) -> dict[str, dict[str, Any]]:
    con = open_source(db=str(showcase))
    try:
        return {kind: _analyze(con, kind) for kind in KINDS}
    finally:
        con.close()


def _plain_html(html: str) -> str:
    text = re.sub(r"<svg.*?</svg>", " ", html, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).replace("&#x27;", "'").split())


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plant_notes(report: dict[str, Any]) -> list[str]:
    """Notes where no renderer looks for them by name: on the report, inside its first
    result, and in fields that do not exist yet (``*_note``, ``warnings``, ``method``)."""
    texts = ["CUPED needs a pre_value column; analysed without it",
             "3 units were exposed twice", "planted nested warning", "planted future method"]
    report["message"] = texts[0]
    report["exposure_note"] = texts[1]
    lists = [v for v in report.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
    target = lists[0][0] if lists else report
    target["warnings"] = [texts[2]]
    target["sequential_method"] = texts[3]
    return texts


@pytest.mark.parametrize("kind", KINDS)
def test_every_note_in_every_format(reports: dict[str, dict[str, Any]], kind: str) -> None:
    """Issue 16.10: a note, a warning or a method anywhere in the report - including fields a
    renderer has never heard of - is said in the table, the JSON and the HTML."""
    report = copy.deepcopy(reports[kind])
    texts = _plant_notes(report)
    table = _one_line(render(report, kind, "table", width=200))  # type: ignore[arg-type]
    html = _plain_html(render(report, kind, "html"))  # type: ignore[arg-type]
    as_json = render(report, kind, "json")  # type: ignore[arg-type]
    for text in texts:
        assert text in table, (kind, "table", text)
        assert text in html, (kind, "html", text)
        assert json.dumps(text) in as_json
    if kind == "experiment":  # the methods of the results are said too
        assert "method: welch" in table or "method: cuped" in table.lower()


def test_experiment_level_message_reaches_table_and_html(showcase: Path) -> None:
    """Issue 16.10: `--cuped` on recorded data said why it fell back only in the JSON."""
    con = open_source(db=str(showcase))
    try:
        from analysis.experiment import analyze_experiments

        report = analyze_experiments(con, cuped=True).to_dict()
    finally:
        con.close()
    said = [e["message"] for e in report["experiments"] if e.get("message")]
    said += [r["message"] for e in report["experiments"] for r in e["results"] if r.get("message")]
    methods = {r["method"] for e in report["experiments"] for r in e["results"]}
    table = _one_line(render(report, "experiment", "table", width=200))
    html = _plain_html(render(report, "experiment", "html"))
    for text in [*said, *methods]:
        assert text in table and text in html, text


@pytest.mark.parametrize("columns", [60, 80, 100, 132])
def test_tables_take_the_terminal_width(reports: dict[str, dict[str, Any]], columns: int,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.11: COLUMNS is the width (it was fixed at 120) and no number is broken."""
    monkeypatch.setenv("COLUMNS", str(columns))
    for kind, report in reports.items():
        text = render(report, kind, "table")  # type: ignore[arg-type]
        widest = max(len(line) for line in text.splitlines())
        assert widest <= columns, (kind, columns, widest)
    divergence = render(reports["divergence"], "divergence", "table")
    for pair in reports["divergence"]["pairs"]:
        for value in (pair["distribution"]["psi"], pair["numeric"]["mae"],
                      pair["latency_ms"]["ratio_median"]):
            assert fmt(value) in divergence, (columns, fmt(value))
    drift = render(reports["drift"], "drift", "table")
    for feature in reports["drift"]["features"]:
        assert fmt(feature["psi"]) in drift and fmt_p(feature["ks_p"]) in drift


def test_numbers_are_never_split_at_any_width(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.11: PSI '0.000191' then '1' on the next line, never again."""
    report = copy.deepcopy(reports["drift"])
    report["features"][0]["psi"] = 0.0001911234
    for width in range(40, 140, 7):
        text = render(report, "drift", "table", width=width)
        assert "0.0001911" in text, width


def test_long_names_are_shortened_with_a_legend(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.11: a long route is not wrapped every few characters: it is shortened and
    the legend under the table gives it in full."""
    report = copy.deepcopy(reports["divergence"])
    long_route = "/inference.GRPCInferenceService/ModelInferWithAVeryLongMethodName"
    for i, pair in enumerate(report["pairs"]):
        pair["route"] = long_route + str(i)
    text = render(report, "divergence", "table", width=90)
    assert max(len(line) for line in text.splitlines()) <= 90
    assert f"= {long_route}0" in text and f"= {long_route}1" in text
    wide = render(report, "divergence", "table", width=0)
    assert f"│ {long_route}0" in wide  # unlimited (a file, a pipe): in full, on one line


def test_without_a_terminal_nothing_is_wrapped(reports: dict[str, dict[str, Any]],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.11: no COLUMNS and no terminal: tables keep their natural width."""
    monkeypatch.delenv("COLUMNS", raising=False)
    text = render(reports["quality"], "quality", "table")  # pytest's stdout is not a TTY
    rows = [line for line in text.splitlines()
            if line.startswith("│") and "fraud-v7@7.0.1 → fraud-v8@8.0.0" in line]
    assert rows and all("[" in line and "paired" in line for line in rows)


def test_sidecar_models_without_a_tty_does_not_truncate(showcase: Path) -> None:
    """Issue 16.11: piped, `sidecar models` printed an 80-column table that cut names."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "sidecar", "models", "--db", str(showcase)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "fraud-v7-replica" in line]
    assert rows, done.stdout
    assert "7.0.1" in rows[0] and "shadow:2000" in rows[0] and "2026-01-05" in rows[0]
    assert "…" not in done.stdout


def test_html_has_a_verdict_first_css_and_no_reprs(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.12: the verdict comes first, every kind has CSS, no Python repr, no empty
    column header, and each file stays far under 2 MB."""
    for kind, report in reports.items():
        html = render(report, kind, "html")  # type: ignore[arg-type]
        assert "<style>" in html and "<script" not in html
        assert html.index('id="verdict"') < html.index("<table")
        assert not re.search(r"\{'\w+': ", html), kind
        assert not re.search(r"<th[^>]*></th>", html), kind
        assert len(html.encode()) < 2_000_000, (kind, len(html))
    divergence = _plain_html(render(reports["divergence"], "divergence", "html"))
    assert re.search(r"fraud-v8 disagrees with fraud-v7 on \d+\.\d\d% of decisions; the "
                     r"replica's noise floor is 0\.00%: the difference is real", divergence)


_TICK = re.compile(r"<text[^>]*>([^<]*)</text>")


def _ticks(svg: str) -> list[str]:
    labels = []
    for raw in _TICK.findall(svg):
        text = raw.strip().replace("\u2212", "-").rstrip("%")
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            labels.append(text)
    return labels


def test_axes_have_rounded_ticks(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.12: tick labels are round numbers (0, 0.25, 10%), not 0.0007923 or 0.2482."""
    seen = 0
    for kind, report in reports.items():
        html = render(report, kind, "html")  # type: ignore[arg-type]
        for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
            for label in _ticks(svg):
                digits = label.lstrip("-").replace(".", "").lstrip("0")
                assert len(digits.rstrip("0")) <= 3, (kind, label)
                seen += 1
    assert seen > 40


def test_serving_never_imports_matplotlib() -> None:
    """Issue 16.12: matplotlib loads when a chart is drawn, not when reports are imported."""
    probe = ("import sys, analysis.report, analysis.report.html, analysis.report.terminal; "
             "print('matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True, cwd=REPO)
    assert done.stdout.strip() == "False"


def test_canaries_read_per_step_in_table_and_html(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.12 with 16.5: a canary is read per step, candidate against stable, in words,
    not as a one-variant experiment (`counts {'canary': 48}`)."""
    report = reports["experiment"]
    if not report.get("canaries"):
        pytest.skip("this experiment report has no canary readout")
    table = _one_line(render(report, "experiment", "table", width=0))
    html = _plain_html(render(report, "experiment", "html"))
    for text in (table, html):
        assert "Canary on /score.Model/Rank, step 2 (50%): score-v2 raises error_rate" in text
        assert "per step" in text and "{'" not in text


def test_legends_sit_outside_the_axes(reports: dict[str, dict[str, Any]]) -> None:
    """Issue 16.12: a legend drawn inside the plotting area can cover a curve; every legend
    is the figure's (below the axes), never an axes' own."""
    import xml.etree.ElementTree as ET

    legends = 0
    for kind, report in reports.items():
        html = render(report, kind, "html")  # type: ignore[arg-type]
        for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
            root = ET.fromstring(svg.replace("xlink:href", "href"))
            for group in root.iter("g"):
                if group.get("id", "").startswith("axes"):
                    inside = [g for g in group.iter("g") if g.get("id", "").startswith("legend")]
                    assert not inside, kind
            legends += sum(1 for g in root.iter("g") if g.get("id", "").startswith("legend"))
    assert legends >= 8


def test_many_pairs_stay_in_one_small_file(reports: dict[str, dict[str, Any]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16.12: charts stop at a byte budget (later sections keep their tables and say
    so), so a report of many pairs or segments stays one file under 2 MB."""
    import analysis.report.html as html_module

    monkeypatch.setattr(html_module, "CHART_BUDGET", 120_000)
    report = copy.deepcopy(reports["divergence"])
    report["pairs"] = [copy.deepcopy(p) for _ in range(4) for p in report["pairs"]]
    html = render(report, "divergence", "html")
    drawn = html.count("<svg")
    assert 0 < drawn < 3 * len(report["pairs"])
    assert "left out to keep the file under 2 MB" in html
    assert html.count("<caption>Figures</caption>") == len(report["pairs"])
    assert len(re.findall(r"<svg.*?</svg>", html, flags=re.S)) == drawn
    assert sum(map(len, re.findall(r"<svg.*?</svg>", html, flags=re.S))) <= 120_000


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_reports_render_in_every_format(kind: str) -> None:
    """A report with nulls and missing parts (an old schema, an empty source) still renders,
    and its message is said."""
    sparse = {"schema": "x", "message": "nothing recorded yet",
              "pairs": [{"route": "r", "primary": "p", "shadow": "s", "n": 0, "fields": None}],
              "features": [{"feature": "f", "kind": "numeric"}], "models": [{"backend": "b"}],
              "comparisons": [{"metric": "auc"}],
              "experiments": [{"name": "e", "srm": None, "results": [{"metric": "m"}]}],
              "canaries": {"routes": [{"route": "c", "steps": None}]}}
    for form in ("table", "html", "json"):
        out = render(sparse, kind, form, width=80)  # type: ignore[arg-type]
        assert "nothing recorded yet" in out, (kind, form)


def test_a_result_significant_only_before_the_correction_says_so(
        reports: dict[str, dict[str, Any]]) -> None:
    """A comparison whose own 95 % interval excludes no effect (p < alpha) but whose Holm
    p does not is not called "no detectable difference" beside an interval that says the
    opposite: the verdict names both p-values and the size of the family."""
    report = copy.deepcopy(reports["experiment"])
    exp = report["experiments"][0]
    row = next(r for r in exp["results"] if r.get("p_value") is not None)
    row["p_value"], row["p_value_holm"] = 0.012, 0.072
    family = sum(1 for r in exp["results"] if r.get("p_value") is not None)
    text = _one_line(render(report, "experiment", "table", width=0))
    said = f"not after the Holm correction for {family} comparisons"
    assert said in text
    assert f"No detectable difference in {row['metric']} between {row['variant']}" not in text
    row["p_value"] = 0.2  # not significant even alone: the plain sentence again
    row["p_value_holm"] = 0.6
    plain = _one_line(render(report, "experiment", "table", width=0))
    assert said not in plain and f"No detectable difference in {row['metric']}" in plain
