"""The --html report: self-contained page, charts present and laid out in headless Chromium, docs screenshot.

Regenerate docs/report-screenshot.png (the same rendering the screenshot test checks) with::

    python tests/test_report_html.py --update-screenshot
"""

from __future__ import annotations

import random
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ctxzip.ledger import LedgerEvent
from ctxzip.report import ReportConfig, build_report
from ctxzip.report_html import CHART_IDS, find_chromium, render_html

pytest.importorskip("genai_prices")

ROOT = Path(__file__).resolve().parents[1]
DOCS_SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
SHOT_SIZE = (1280, 2300)
GENERATED_AT = datetime(2025, 7, 1, 9, 0, tzinfo=timezone.utc)

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="headless chromium is not installed")


def demo_events() -> list[LedgerEvent]:
    """A deterministic month of traffic: three routes, four models, cached prefixes on the RAG route."""
    rng = random.Random(20250601)
    t0 = datetime(2025, 6, 1, tzinfo=timezone.utc)
    models = ["gpt-4o", "gpt-4o", "claude-sonnet-4-5", "gemini-2.5-pro", "gpt-4.1-mini"]
    events = []
    for i in range(360):
        route = ("/rag", "/chat", "/summarize")[i % 3]
        model = rng.choice(models)
        before = rng.randint(3_000, 40_000) if route != "/summarize" else rng.randint(20_000, 240_000)
        rate = rng.uniform(0.2, 0.55)
        cached = int(before * rng.uniform(0.2, 0.5)) if route == "/rag" else None
        hit = rng.random() < 0.12
        events.append(LedgerEvent(
            time=t0 + timedelta(hours=i * 2 + rng.random()), target_model=model, tokens_before=before,
            tokens_after=int(before * rate), method="lingua2" if route != "/summarize" else "longlingua",
            seconds=0.002 if hit else rng.lognormvariate(-2.3, 0.7), route=route, app="demo",
            cached_prefix_tokens=cached, prefix_changed=None if cached is None else rng.random() < 0.25,
            cache_hit=hit, id=f"demo-{i:04d}",
        ))
    return events


def demo_report():
    return build_report(demo_events(), ReportConfig(compute_usd_per_hour=1.0, by="route"),
                        source="ledger.sqlite3", generated_at=GENERATED_AT)


def test_page_is_self_contained_with_four_charts():
    page = render_html(demo_report())
    for cid in CHART_IDS:
        assert f'id="{cid}"' in page
    assert page.count("<svg") == 4
    assert len(re.findall(r'class="mark', page)) > 30
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page
    assert "Net savings" in page and "Assumptions" in page and "genai-prices" in page


def test_page_escapes_ledger_strings():
    events = [LedgerEvent(time=GENERATED_AT, target_model="gpt-4o", tokens_before=100, tokens_after=50,
                          method="m", seconds=0.1, route="<script>alert(1)</script>")]
    page = render_html(build_report(events, ReportConfig(by="route")))
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_empty_report_page():
    page = render_html(build_report([], ReportConfig()))
    assert page.count("no data") == 4


def _render(tmp_path: Path):
    from ctxzip.report_html import write_html

    return write_html(demo_report(), tmp_path / "report.html")


@pytest.mark.browser
@needs_chromium
def test_charts_render_in_headless_chromium(tmp_path):
    from ctxzip.report_html import dump_dom

    dom = dump_dom(_render(tmp_path))
    assert 'data-charts-rendered="4"' in dom
    for cid in CHART_IDS:
        m = re.search(rf'id="{cid}"[^>]*data-rendered="(\w+)" data-marks="(\d+)"', dom)
        assert m is not None, cid
        assert m.group(1) == "yes" and int(m.group(2)) > 0, (cid, m.groups())


def _diff(a_path: Path, b_path: Path) -> tuple[tuple[int, int], tuple[int, int], float, float]:
    from PIL import Image, ImageChops

    a = Image.open(a_path).convert("RGB")
    b = Image.open(b_path).convert("RGB")
    if a.size != b.size:
        return a.size, b.size, 255.0, 1.0
    d = ImageChops.difference(a, b).convert("L")
    hist = d.histogram()
    total = a.size[0] * a.size[1]
    mean = sum(i * n for i, n in enumerate(hist)) / total
    big = sum(hist[64:]) / total
    return a.size, b.size, mean, big


@pytest.mark.browser
@needs_chromium
def test_docs_screenshot_matches_rendering(tmp_path):
    pytest.importorskip("PIL")
    from ctxzip.report_html import screenshot

    assert DOCS_SCREENSHOT.exists(), "run: python tests/test_report_html.py --update-screenshot"
    shot = screenshot(_render(tmp_path), tmp_path / "shot.png", width=SHOT_SIZE[0], height=SHOT_SIZE[1])
    size_a, size_b, mean, big = _diff(shot, DOCS_SCREENSHOT)
    assert size_a == size_b == SHOT_SIZE
    # Same Chromium and fonts give identical pixels; the margin allows anti-aliasing noise only. One hidden chart
    # changes ~1% of the pixels and a different ledger ~2%: either fails. If it fails after an intended change,
    # regenerate with: python tests/test_report_html.py --update-screenshot
    assert mean < 0.5 and big < 0.004, (mean, big)


def _update_screenshot() -> None:
    import tempfile

    from ctxzip.report_html import screenshot

    with tempfile.TemporaryDirectory() as tmp:
        screenshot(_render(Path(tmp)), DOCS_SCREENSHOT, width=SHOT_SIZE[0], height=SHOT_SIZE[1])
    print(f"wrote {DOCS_SCREENSHOT}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--update-screenshot"]:
        _update_screenshot()
    else:
        raise SystemExit("usage: python tests/test_report_html.py --update-screenshot")
