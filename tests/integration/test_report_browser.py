"""The auditor's HTML report of a real study, opened in a real browser (Debian's headless Chromium
through playwright): it loads with no failed request, fetches nothing but itself and inline data,
logs no console error, shows the verification banner, and its per-site table holds the numbers an
independent dp_accounting PLD recomputation gives, to 3 decimals. The attacks: a signed certificate
that claims less than its events, a site ledger cut after the study, a registry string that tries
to run script. Each page's screenshot is kept (under tmp_path, and $FLSUITE_TEST_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.conftest import run_cli

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def _playwright():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]' (it uses /usr/bin/chromium, no download)")
    return sync_playwright


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One small real DP study (the smoke experiment: 2 rounds, 5 sites) with its site folders."""
    _playwright()
    root = tmp_path_factory.mktemp("study")
    result = run_cli("run", "experiment=smoke", f"sites_dir={root / 'sites'}", "--output-dir", str(root / "out"), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return root


def _copy(study: Path, tmp_path: Path) -> Path:
    shutil.copytree(study, tmp_path / "copy")
    return tmp_path / "copy"


def _report(root: Path, html: Path, *ledgers: str) -> object:
    sites = sorted(p for p in (root / "sites").iterdir() if (p / "ledger.jsonl").exists())
    ledger_args = [a for site in sites if not ledgers or site.name in ledgers for a in ("--ledger", str(site))]
    return run_cli("audit", "report", str(root / "out" / "registry"), "--html", str(html), *ledger_args, timeout=600)


def _open(html: Path, screenshot: Path) -> dict:
    """Render the page in headless Chromium; what it requested, what failed, what it logged, and its tables."""
    found: dict = {"requests": [], "failed": [], "console": [], "page_errors": []}
    with _playwright()() as driver:
        context = driver.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="flsuite-chromium-"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900})
        try:
            page = context.new_page()
            page.on("request", lambda r: found["requests"].append(r.url))
            page.on("requestfailed", lambda r: found["failed"].append(r.url))
            page.on("console", lambda m: found["console"].append((m.type, m.text)))
            page.on("pageerror", lambda e: found["page_errors"].append(str(e)))
            page.goto(html.resolve().as_uri(), wait_until="load")
            found["banner"] = page.locator("#verdict").get_attribute("data-status")
            found["banner_visible"] = page.locator("#verdict").is_visible()
            found["banner_text"] = page.locator("#verdict").inner_text()
            found["rows"] = page.eval_on_selector_all(
                "#sites tbody tr", "rows => rows.map(r => Object.fromEntries([...r.querySelectorAll('td[data-field]')]"
                ".map(td => [td.dataset.field, td.innerText.trim()])))")
            found["pwned"] = page.evaluate("typeof window.pwned")
            found["images"] = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.naturalWidth)")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            context.close()
    artifacts = os.environ.get("FLSUITE_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(artifacts) / screenshot.name)
    return found


def _independent_pld(events: list[tuple[float, float, int]], delta: float) -> float:
    """dp_accounting's PLD over every (q, sigma, steps), composed one by one: no flsuite code."""
    import dp_accounting
    from dp_accounting import pld

    accountant = pld.PLDAccountant()
    for q, sigma, steps in events:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


def _ledger_events(ledger: Path) -> list[tuple[float, float, int]]:
    """Every charged event of a ledger, read straight from its JSON lines (final events and open reservations)."""
    final, open_ = [], {}
    for number, line in enumerate(ledger.read_text().splitlines()):
        entry = json.loads(line)
        kind = next(k for k in entry if k not in ("hash", "prev"))
        value = entry[kind]
        if kind == "event":
            final.append((number, value))
        elif kind == "reserve":
            open_[value["id"]] = (number, value["event"])
        else:
            open_.pop(value["reservation"])
            if kind == "spend":
                final.append((number, value["event"]))
    events = [event for _, event in sorted([*final, *open_.values()], key=lambda row: row[0])]
    return [(e["sample_rate"], e["noise_multiplier"], e["steps"]) for e in events]


def _assert_clean_load(found: dict) -> None:
    assert not found["failed"], found["failed"]
    assert all(url.startswith(("file:", "data:")) for url in found["requests"]), found["requests"]
    assert not [c for c in found["console"] if c[0] == "error"] and not found["page_errors"], found
    assert found["banner_visible"] and found["images"] and all(w > 0 for w in found["images"])


def test_the_report_of_a_real_study_renders_in_chromium_with_the_pld_numbers(study, tmp_path):
    html = tmp_path / "report.html"
    result = _report(study, html)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    found = _open(html, tmp_path / "report.png")
    _assert_clean_load(found)
    assert found["banner"] == "ok" and found["banner_text"].startswith("VERIFIED")
    from flsuite.registry import Registry

    with Registry.open(study / "out" / "registry", create=False) as registry:
        final = registry.versions(None)[-1]
    rows = {row["site"]: row for row in found["rows"]}
    assert sorted(rows) == sorted(final.dp_certificate["sites"]) and len(rows) == 5
    for site, claim in final.dp_certificate["sites"].items():
        row = rows[site]
        phases = [(p["q"], p["sigma"], p["steps"]) for p in claim["phases"]]
        study_eps = _independent_pld(phases, claim["delta"])
        ledger_eps = _independent_pld(_ledger_events(study / "sites" / site / "ledger.jsonl"), claim["delta"])
        assert abs(float(row["pld_epsilon"]) - study_eps) < 5e-4  # equal to 3 decimals
        assert abs(float(row["pld_total_ledger"]) - ledger_eps) < 5e-4
        assert abs(float(row["claimed_epsilon"]) - claim["epsilon"]) < 5e-4
        assert float(row["cap"]) == json.loads((study / "sites" / site / "site.json").read_text())["max_epsilon"]
        assert row["status"] == "ok"


def test_a_signed_certificate_that_claims_less_than_its_events_shows_failure(study, tmp_path):
    from flsuite.registry import Registry

    root = _copy(study, tmp_path)
    with Registry.open(root / "out" / "registry", signing_key_path=root / "out" / "coordinator-signing.key") as registry:
        final = registry.versions(None)[-1]
        certificate = json.loads(json.dumps(final.dp_certificate))
        for claim in certificate["sites"].values():  # the coordinator halves what it certifies
            claim["epsilon"] /= 2
            claim["total_epsilon"] = claim["epsilon"]
        registry.publish(registry.load_weights(final.number), run_id=final.run_id, study_id=final.study_id, round=final.round + 1,
                         config_hash=final.manifest["config_hash"], code_digest=final.manifest["code_digest"],
                         sites=final.sites, metrics=final.metrics, dp_certificate=certificate)
    html = tmp_path / "under.html"
    result = _report(root, html)
    assert result.returncode == 1 and "FAILURE" in result.stdout and "Traceback" not in result.stderr
    found = _open(html, tmp_path / "under-claimed.png")
    _assert_clean_load(found)
    assert found["banner"] == "failure" and "FAILURE" in found["banner_text"]
    assert {row["status"].split()[0] for row in found["rows"]} == {"FAILURE"}


def test_a_site_ledger_cut_after_the_study_shows_failure(study, tmp_path):
    root = _copy(study, tmp_path)
    ledger = root / "sites" / "site-0" / "ledger.jsonl"
    ledger.write_text("".join(ledger.read_text().splitlines(keepends=True)[:-2]))  # the last round's spend, gone
    html = tmp_path / "cut.html"
    result = _report(root, html)
    assert result.returncode == 1 and "FAILURE" in result.stdout
    found = _open(html, tmp_path / "cut-ledger.png")
    _assert_clean_load(found)
    rows = {row["site"]: row for row in found["rows"]}
    assert found["banner"] == "failure" and rows["site-0"]["status"].startswith("FAILURE") and "cut" in rows["site-0"]["status"]
    assert rows["site-1"]["status"] == "ok"


def test_a_metric_named_like_a_script_is_shown_as_text_and_never_runs(study, tmp_path):
    from flsuite.registry import Registry

    root = _copy(study, tmp_path)
    hostile = "<script>window.pwned=1</script>"
    with Registry.open(root / "out" / "registry", signing_key_path=root / "out" / "coordinator-signing.key") as registry:
        final = registry.versions(None)[-1]
        registry.publish(registry.load_weights(final.number), run_id=final.run_id, study_id=final.study_id, round=final.round + 1,
                         config_hash=final.manifest["config_hash"], code_digest=final.manifest["code_digest"],
                         sites=final.sites, metrics={**final.metrics, hostile: 1.0}, dp_certificate=final.dp_certificate)
    html = tmp_path / "hostile.html"
    result = _report(root, html)
    assert result.returncode == 0, result.stdout[-2000:]
    found = _open(html, tmp_path / "hostile.png")
    _assert_clean_load(found)
    assert found["pwned"] == "undefined" and "&lt;script&gt;window.pwned=1" in html.read_text()
