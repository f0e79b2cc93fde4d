"""Build the HTML report from run folders and take a screenshot of it in headless Chromium
with the network off (every host unresolvable, a dead proxy): the page must render from the
file alone.

    python scripts/report_screenshot.py RUN_DIR... [--out DIR] [--size 1280,2000]

Run folders are only read (indexed into a store held in memory). Writes ``DIR/report.html``
and ``DIR/report.png`` (default ``DIR``: ``runs/report-check``); exits non-zero when the page
holds an ``http://`` or ``https://`` reference, or Chromium makes no screenshot. Chromium is
``$CHROMIUM``, else the first of ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH
(Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sslpoison.results.html_report import write_report
from sslpoison.results.store import ResultsStore, run_folders

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` or the first of :data:`BROWSERS` on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((found for b in BROWSERS if (found := shutil.which(b))), None)


def remote_references(page: str) -> list[str]:
    """Every ``http://`` or ``https://`` in the page (there must be none)."""
    return re.findall(r"https?://[^\s\"'<>)]*", page)


def screenshot(page: Path, png: Path, size: str = "1280,2000", browser: str | None = None):
    """Screenshot of ``page`` (``size`` = width,height in CSS pixels) with the network off."""
    browser = browser or find_chromium()
    if browser is None:
        raise FileNotFoundError("no Chromium found: set $CHROMIUM or install chromium")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", "--disable-background-networking", "--disable-extensions",
            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=127.0.0.1:9", f"--window-size={size}",
            f"--screenshot={png.resolve()}", page.resolve().as_uri(),
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    if not png.is_file():
        raise RuntimeError(f"{browser} made no screenshot (exit {done.returncode}): {done.stderr}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (or folders holding them)")
    parser.add_argument("--out", default="runs/report-check", help="folder for the outputs")
    parser.add_argument("--size", default="1280,2000", help="window width,height")
    parser.add_argument("--title", default="sslpoison report")
    args = parser.parse_args(argv)
    out = Path(args.out)
    with ResultsStore(":memory:") as store:
        store.add_folders(run_folders(args.runs))
        runs = store.runs()
    page = write_report(runs, out / "report.html", args.title, f"{len(runs)} run folders")
    remote = remote_references(page.read_text())
    if remote:
        print(f"error: {page} references the network: {remote[:3]}", file=sys.stderr)
        return 1
    png = screenshot(page, out / "report.png", args.size)
    print(f"report: {page} ({page.stat().st_size / 1e6:.1f} MB, {len(runs)} runs)")
    print(f"screenshot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
