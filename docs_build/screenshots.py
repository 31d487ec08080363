"""Screenshots of the documentation site for docs/about-the-docs.md.

    python docs_build/screenshots.py [--site DIR] [--out docs/img]

Builds the site (``mkdocs build --strict``) into a temporary folder unless ``--site`` names a
built one, serves it on a local port (the search index is fetched by the page, which a
``file://`` URL would not allow) and takes PNGs of a few pages with headless Chromium
through chromedriver — Debian's ``chromium`` and ``chromium-driver``, as the HTML report's
browser tests use. Prints each page's browser console errors; exits 1 if there were any.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {                                   # file name -> (path in the site, window height)
    "site-home.png": ("", 1100),
    "site-api.png": ("api/modules/", 1100),
    "site-choosing-a-cell.png": ("choosing-a-cell/#the-table", 1300),
}


def build(site: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                    str(site), "--config-file", str(ROOT / "mkdocs.yml")], cwd=ROOT,
                   env=env, check=True)


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise SystemExit("screenshots need Debian's chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                 f"--window-size={width},{height}"):
        opts.add_argument(flag)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", type=Path, help="an already built site (default: build one)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--width", type=int, default=1280)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        site = args.site or Path(tmp) / "site"
        if args.site is None:
            build(site)
        server, base = serve(site)
        errors = 0
        try:
            for name, (path, height) in PAGES.items():
                b = browser(args.width, height)
                try:
                    b.get(base + path)
                    b.execute_script("return document.fonts.ready")
                    out = args.out / name
                    b.save_screenshot(str(out))
                    logs = [e for e in b.get_log("browser") if e["level"] == "SEVERE"]
                    errors += len(logs)
                    for e in logs:
                        print(f"{path or '/'}: console error: {e['message']}")
                    print(f"{out} ({base}{path})")
                finally:
                    b.quit()
        finally:
            server.shutdown()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
