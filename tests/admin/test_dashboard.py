"""The dashboard page, in real headless Chromium, shows live numbers from /v1/stats."""

from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.browser]


async def test_dashboard_shows_live_traffic(
        echo, start_sidecar, channel_to, chromium, tmp_path) -> None:
    primary, shadow = await echo(), await echo(hang=True)
    sc = await start_sidecar(
        {"p": primary.target, "s": shadow.target},
        [{"match": "/pkg.Model/*", "primary": "p",
          "shadows": [{"backend": "s", "max_in_flight": 2, "timeout_ms": 5000}]}],
    )
    stub = channel_to(sc.port).unary_unary("/pkg.Model/Predict")
    for _ in range(25):
        await stub(b"x")
    url = f"http://127.0.0.1:{sc.admin.port}/"
    driver = await asyncio.to_thread(chromium)
    try:
        await asyncio.to_thread(driver.get, url)

        def read(selector: str) -> str:
            # Read in one script: the page re-renders every second, so element handles go stale.
            return str(driver.execute_script(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
                selector,
            ))

        for _ in range(100):
            if await asyncio.to_thread(read, '[data-kpi="requests"]') == "25":
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(read, '[data-kpi="requests"]') == "25"
        assert await asyncio.to_thread(read, '[data-dropped="s"]') == "23"
        # Live: more traffic shows up without reloading the page.
        for _ in range(5):
            await stub(b"y")
        for _ in range(50):
            if await asyncio.to_thread(read, '[data-kpi="requests"]') == "30":
                break
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(read, '[data-kpi="requests"]') == "30"
        png = tmp_path / "dashboard.png"
        await asyncio.to_thread(driver.save_screenshot, str(png))
        assert png.stat().st_size > 1000
    finally:
        await asyncio.to_thread(driver.quit)


async def test_rollback_click_changes_the_canary(echo, start_sidecar, chromium, tmp_path) -> None:
    stable, cand = await echo(), await echo()
    sc = await start_sidecar(
        {"stable": stable.target, "cand": cand.target},
        [{"match": "/pkg.Model/Predict", "primary": "stable",
          "canary": {"stable": "stable", "candidate": "cand", "steps": [10, 100],
                     "step_min_duration_s": 3600, "evaluation_interval_s": 3600}}],
        admin={"listen": "127.0.0.1:0", "token": "click-token"},
    )
    canary = sc.canaries["/pkg.Model/Predict"]
    assert canary.state.state == "running"
    driver = await asyncio.to_thread(chromium)
    try:
        await asyncio.to_thread(driver.get, f"http://127.0.0.1:{sc.admin.port}/")

        def click_rollback() -> bool:
            from selenium.webdriver.common.by import By

            buttons = driver.find_elements(By.CSS_SELECTOR, '[data-action="rollback"]')
            if not buttons:
                return False
            driver.find_element(By.ID, "token").send_keys("click-token")
            buttons[0].click()
            alert = driver.switch_to.alert  # the reason prompt
            alert.send_keys("dashboard test")
            alert.accept()
            return True

        for _ in range(50):
            try:
                if await asyncio.to_thread(click_rollback):
                    break
            except Exception:  # the page re-rendered under the click; try again
                pass
            await asyncio.sleep(0.1)
        for _ in range(50):
            if canary.state.state == "rolled_back":
                break
            await asyncio.sleep(0.1)
        assert canary.state.state == "rolled_back"
        assert canary.state.last_decision["reasons"] == ["dashboard test"]
        # The page shows the new state on its next refresh.
        for _ in range(50):
            shown = await asyncio.to_thread(
                driver.execute_script,
                "const e = document.querySelector('[data-canary-state]');"
                "return e ? e.textContent : '';",
            )
            if shown == "rolled_back":
                break
            await asyncio.sleep(0.1)
        assert shown == "rolled_back"
        png = tmp_path / "canary.png"
        await asyncio.to_thread(driver.save_screenshot, str(png))
    finally:
        await asyncio.to_thread(driver.quit)


async def test_dashboard_says_why_a_shadow_fails_and_forgets_removed_rows(
    start_sidecar, channel_to, chromium, tmp_path
) -> None:
    """Issue 15.8 / 15.9 / issue 17 "Failure visible": a shadow answering NOT_FOUND for a
    model it does not serve shows its status and message next to its errored count and in
    the backends table; counters use the words sampled/sent/dropped/errored/answered; after
    a reload that removes the shadow, its rows leave the page."""
    import dataclasses

    from sidecar.config import parse_config
    from sidecar.demo.models import build_infer_request, make_demo_models, start_model_server
    from tests.conftest import sidecar_config

    method = "/inference.GRPCInferenceService/ModelInfer"
    model, _ = make_demo_models()
    other = dataclasses.replace(model, name="fraud-gbm")
    async with (await start_model_server(model) as primary,
                await start_model_server(other) as shadow):
        backends = {"fraud-lr": primary.target, "fraud-gbm": shadow.target}
        sc = await start_sidecar(backends, [{"match": method, "primary": "fraud-lr",
                                             "codec": "oip",
                                             "shadows": [{"backend": "fraud-gbm"}]}])
        infer = channel_to(sc.port).unary_unary(method)
        for _ in range(12):
            await infer(build_infer_request(model.name, [[0.5] * 8]))
        driver = await asyncio.to_thread(chromium)
        try:
            await asyncio.to_thread(driver.get, f"http://127.0.0.1:{sc.admin.port}/")

            def read(selector: str) -> str:
                return str(driver.execute_script(
                    "const e = document.querySelector(arguments[0]);"
                    "return e ? e.textContent : '';", selector))

            async def wait_for(selector: str, want: str) -> str:
                shown = ""
                for _ in range(100):
                    shown = await asyncio.to_thread(read, selector)
                    if want in shown:
                        break
                    await asyncio.sleep(0.1)
                return shown

            assert await wait_for('[data-errored="fraud-gbm"]', "12") == "12"
            assert await wait_for('[data-answered="fraud-gbm"]', "0") == "0"
            last = await wait_for('[data-last-error="shadow-fraud-gbm"]', "NOT_FOUND")
            assert "NOT_FOUND" in last and "not served here" in last and "ago" in last
            table = await wait_for('[data-last-error="fraud-gbm"]', "NOT_FOUND")
            assert "not served here" in table
            assert await wait_for('[data-breaker="fraud-gbm"]', "closed") == "closed"
            assert await wait_for('[data-error-rate="fraud-gbm"]', "100") == "100.0%"
            no_error = await asyncio.to_thread(read, '[data-last-error="fraud-lr"]')
            assert no_error == "\u2013"  # the page's dash: none
            await asyncio.to_thread(driver.save_screenshot, str(tmp_path / "errors.png"))

            loaded = parse_config(sidecar_config(
                tmp_path / "sidecar.duckdb", backends,
                [{"match": method, "primary": "fraud-lr", "codec": "oip"}]))
            assert await sc.reload(loaded, actor="test", reason="drop the shadow")
            for _ in range(100):
                gone = await asyncio.to_thread(
                    driver.execute_script,
                    "return document.body.innerText.includes('fraud-gbm\\tshadow') || "
                    "!!document.querySelector('[data-errored]');")
                if not gone:
                    break
                await asyncio.sleep(0.1)
            assert not gone
        finally:
            await asyncio.to_thread(driver.quit)
