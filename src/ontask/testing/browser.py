"""Open a report in headless Chromium (Debian's package) through Playwright, for tests.

Playwright's own browser download needs the internet; this machine has Debian's
`chromium` at /usr/bin/chromium instead, which Playwright drives when given its path.
The flags keep Chromium from reaching for the network at start (background services,
component updates), which on a closed machine only produces refused connections.

`open_report` records everything a test needs to prove that a page is sound and inert:
console messages and page errors, dialogs (`alert`, `confirm`, `prompt`) that script
opened, requests the page tried to make, and how long it took to be ready.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    """Debian's Chromium, or ONTASK_CHROMIUM; None when neither is there."""
    path = os.environ.get("ONTASK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).exists() else None


@dataclass
class PageLog:
    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    errors: list[str] = field(default_factory=list)  # uncaught exceptions in the page
    dialogs: list[str] = field(default_factory=list)  # alert/confirm/prompt opened by script
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    ready_s: float | None = None

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind == "error"]


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium Browser (Playwright), closed on exit."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise RuntimeError("no Chromium found: install Debian's `chromium` or set ONTASK_CHROMIUM")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        try:
            yield b
        finally:
            b.close()


@contextmanager
def open_report(b: Any, path: Path, *, width: int = 1400, height: int = 900,
                timeout_s: float = 60.0) -> Iterator[tuple[Any, PageLog]]:
    """Load `path` (file://) in a fresh page and wait until report.js marks it ready.

    `ready_s` is from navigation start to every figure drawn (`body[data-ready]`).
    """
    log = PageLog()
    page = b.new_page(viewport={"width": width, "height": height})
    page.on("console", lambda m: log.console.append((m.type, m.text)))
    page.on("pageerror", lambda e: log.errors.append(str(e)))
    page.on("request", lambda r: log.requests.append(r.url))

    def on_dialog(d: Any) -> None:
        log.dialogs.append(f"{d.type}: {d.message}")
        d.dismiss()

    page.on("dialog", on_dialog)
    # Anything that slips past escaping and calls these is caught here, before page code runs.
    page.add_init_script("""
        window.__xss = [];
        for (const name of ['alert', 'confirm', 'prompt']) {
          const original = window[name];
          window[name] = function (...args) { window.__xss.push(name + ':' + args.join(',')); return original.apply(window, args); };
        }""")
    t0 = time.perf_counter()
    page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_s * 1000)
    page.wait_for_selector("body[data-ready='1']", state="attached", timeout=timeout_s * 1000)
    log.ready_s = time.perf_counter() - t0
    try:
        yield page, log
    finally:
        page.close()
