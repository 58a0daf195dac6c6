"""First paint of the web page (/ui/) on loopback, measured by the browser's own Paint Timing API.

On a fresh Postgres database, a Redis db and a moto S3 server, the API alone (no worker) serves the page;
Debian's chromium (Playwright) loads it cold, in a new browser context each time (no HTTP cache, no service
worker yet), N times: the sign-in page, and the signed-in home (the key already in sessionStorage, as after
a reload); each in a new tab (its renderer process started by the navigation, counted in the figure) and in
a tab that already showed a page of this origin (the page's own cost). Reports first-paint and first-contentful-paint (ms after navigation start) and the script size.
Nothing is asserted: a figure for the README, not a test. On a shared 2-core machine the figures follow its
load (printed with them).

    python -m bench.ui_first_paint [--runs 10] [--redis-db 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAINTS = """() => new Promise((resolve) => {
  const read = () => Object.fromEntries(performance.getEntriesByType('paint').map((e) => [e.name, e.startTime]));
  const now = read();
  if (now['first-contentful-paint'] !== undefined) return resolve(now);
  new PerformanceObserver(() => { const p = read(); if (p['first-contentful-paint'] !== undefined) resolve(p); })
    .observe({ type: 'paint', buffered: true });
})"""


def measure(url: str, key: str, runs: int, signed_in: bool, warm: bool) -> list[dict]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        for _ in range(runs + 1):  # the first load warms the server's own caches; not counted
            ctx = browser.new_context(viewport={"width": 1280, "height": 800})
            if signed_in:
                ctx.add_init_script(f"sessionStorage.setItem('asrq.apiKey', {key!r})")
            page = ctx.new_page()
            if warm:  # the tab's renderer process already running (a page of the same origin was open)
                page.goto(url + "/healthz")
            page.goto(url + "/ui/", wait_until="load")
            selector = "#dropzone" if signed_in else "#key"
            page.wait_for_selector(selector)
            paints = page.evaluate(PAINTS)
            nav = page.evaluate("JSON.parse(JSON.stringify(performance.getEntriesByType('navigation')[0]))")
            out.append({"fp": paints.get("first-paint"), "fcp": paints["first-contentful-paint"],
                        "ttfb": nav["responseStart"], "load": nav["loadEventEnd"]})
            ctx.close()
        browser.close()
    return out[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("ASRQ_TEST_REDIS_DB", "11")))
    args = ap.parse_args()

    from app.api.routes_ui import UI_DIR
    from app.db.migrate import upgrade
    from tests.services import Stack, apply_env, base_env, free_port, moto_s3, postgres_database, redis_db

    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    script = sum(p.stat().st_size for p in UI_DIR.glob("**/*.js"))
    print(f"script: {script / 1024:.1f} KB in {len(list(UI_DIR.glob('**/*.js')))} files (budget 150 KB)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        key = secrets.token_urlsafe(16)
        with moto_s3("asrq-bench", tmp / "moto") as (endpoint, _), postgres_database() as db, \
                redis_db(args.redis_db) as broker:
            upgrade(db)
            env = base_env(db, broker, "s3://asrq-bench/ui", endpoint, tmp, key)
            apply_env(env)
            st = Stack(env=env, tmp=tmp, api_url=f"http://127.0.0.1:{free_port()}", api_key=key)
            try:
                st.start_api()
                for label, signed_in, warm in (("sign-in page, new tab", False, False),
                                               ("signed-in home, new tab", True, False),
                                               ("sign-in page, tab already on this origin", False, True),
                                               ("signed-in home, tab already on this origin", True, True)):
                    rows = measure(st.api_url, key, args.runs, signed_in, warm)
                    fcp = [r["fcp"] for r in rows]
                    fp = [r["fp"] for r in rows if r["fp"] is not None]
                    print(f"{label}: first-contentful-paint median {statistics.median(fcp):.0f} ms, "
                          f"max {max(fcp):.0f} ms; first-paint median {statistics.median(fp):.0f} ms; "
                          f"first byte of the page median {statistics.median(r['ttfb'] for r in rows):.0f} ms; "
                          f"load event median {statistics.median(r['load'] for r in rows):.0f} ms ({len(rows)} cold loads)")
            finally:
                st.stop_all()


if __name__ == "__main__":
    main()
