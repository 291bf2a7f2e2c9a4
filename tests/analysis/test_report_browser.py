"""Issue 16.12: every HTML report, opened from disk in real headless Chromium, renders: the
page is not blank, the verdict is there and readable, and each chart is drawn at a size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from report_data import KINDS, build_showcase

pytestmark = [pytest.mark.browser]

#: What the verdict of each showcase report must say, and how many charts it draws.
EXPECTED = {
    "divergence": ("fraud-v8 disagrees with fraud-v7 on", 6),
    "experiment": ("treat raises revenue by", 1),
    "drift": ("input features drifted", 1),
    "quality": ("fraud-v8@8.0.0 scores AUC", 1),
    "fields": ("beyond the replica's noise floor", 2),
}


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from analysis.cli import main

    out = tmp_path_factory.mktemp("pages")
    db = build_showcase(out / "show.duckdb")
    for kind in KINDS:
        code = main(["report", kind, "--db", str(db), "--format", "html",
                     "-o", str(out / f"{kind}.html")])
        assert code == 0, kind
    return {kind: out / f"{kind}.html" for kind in KINDS}


def _colours(png: Path) -> int:
    from PIL import Image

    with Image.open(png) as image:
        colours = image.convert("RGB").resize((200, 200)).getcolors(maxcolors=40_000)
        return len(colours or ())


def test_every_report_renders_in_chromium(
        chromium: Callable[..., Any], pages: dict[str, Path], tmp_path: Path) -> None:
    driver = chromium(1200)
    try:
        for kind, path in pages.items():
            assert path.stat().st_size < 2_000_000, (kind, path.stat().st_size)
            driver.get(path.as_uri())
            verdict = driver.execute_script(
                "const v = document.getElementById('verdict'); "
                "if (!v) return null; const r = v.getBoundingClientRect(); "
                "return {text: v.innerText, top: r.top, height: r.height};")
            phrase, charts = EXPECTED[kind]
            assert verdict is not None and phrase in verdict["text"], (kind, verdict)
            assert verdict["top"] < 200 and verdict["height"] > 20, (kind, verdict)
            sizes = driver.execute_script(
                "return [...document.querySelectorAll('figure.chart svg')].map(s => {"
                "const r = s.getBoundingClientRect(); return [r.width, r.height]; });")
            assert len(sizes) == charts, (kind, sizes)
            assert all(w > 300 and h > 150 for w, h in sizes), (kind, sizes)
            styled = driver.execute_script(
                "return getComputedStyle(document.querySelector('main')).maxWidth;")
            assert styled != "none", kind  # the inline CSS applied
            png = tmp_path / f"{kind}.png"
            driver.save_screenshot(str(png))
            assert _colours(png) > 20, kind  # not a blank page
    finally:
        driver.quit()
