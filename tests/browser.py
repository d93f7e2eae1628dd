"""Open a page in headless Chromium and report what the browser did with it, over the DevTools protocol.

Debian's ``chromium`` (``make browser`` installs it). One browser per call, its own profile in a temporary
directory; the protocol runs over a websocket (aiohttp, which s3fs brings).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

BROWSER = "chromium"
START_TIMEOUT_S = 60
LOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class PageVisit:
    requests: list[str]  # every URL the page asked for, the page itself included
    images: list[dict]  # per <img>: src prefix, naturalWidth, complete
    scripts: int  # <script> elements in the DOM
    text: str  # document.body.innerText


def browser_path() -> str | None:
    return shutil.which(BROWSER)


def _start(profile: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [
            BROWSER,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the renderers and helpers go with it
    )
    port_file = Path(profile) / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (port_file.exists() and port_file.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"{BROWSER} did not start (exit code {process.poll()})")
        time.sleep(0.1)
    return process, int(port_file.read_text().splitlines()[0])


async def _visit(port: int, url: str) -> PageVisit:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
            target = next(t for t in await response.json() if t["type"] == "page")
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as socket:
            ids = itertools.count(1)
            events: list[dict] = []

            async def call(method: str, **params: object) -> dict:
                call_id = next(ids)
                await socket.send_json({"id": call_id, "method": method, "params": params})
                async for message in socket:
                    data = json.loads(message.data)
                    if data.get("id") == call_id:
                        if "error" in data:
                            raise RuntimeError(f"{method}: {data['error']}")
                        return data["result"]
                    events.append(data)
                raise RuntimeError("the browser closed the connection")

            async def loaded() -> None:
                if any(e.get("method") == "Page.loadEventFired" for e in events):
                    return
                async for message in socket:
                    data = json.loads(message.data)
                    events.append(data)
                    if data.get("method") == "Page.loadEventFired":
                        return

            await call("Network.enable")
            await call("Page.enable")
            await call("Page.navigate", url=url)
            await asyncio.wait_for(loaded(), LOAD_TIMEOUT_S)
            script = """JSON.stringify({
                images: Array.from(document.images).map(i => ({src: i.src.slice(0, 30), naturalWidth: i.naturalWidth,
                                                                complete: i.complete})),
                scripts: document.scripts.length, text: document.body.innerText})"""
            found = json.loads(
                (await call("Runtime.evaluate", expression=script, returnByValue=True))["result"]["value"]
            )
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return PageVisit(requests, found["images"], found["scripts"], found["text"])


def visit(path: Path) -> PageVisit:
    """Load ``path`` (a local HTML file) and return what the browser requested and rendered."""
    with tempfile.TemporaryDirectory() as profile:
        process, port = _start(profile)
        try:
            return asyncio.run(_visit(port, path.resolve().as_uri()))
        finally:
            _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Kill the browser's whole process group and wait until it is gone: a helper process still alive can write
    into the profile while it is deleted ("Directory not empty: 'Default'")."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def assert_self_contained(page: Path, thumbnails: int) -> str:
    """Open ``page`` in the browser: no request beyond the file and its data URIs, no script, every image decoded;
    ``thumbnails`` images besides the plots. Returns the page's text as shown."""
    seen = visit(page)
    outside = [url[:80] for url in seen.requests if url != page.resolve().as_uri() and not url.startswith("data:")]
    assert outside == []
    assert seen.scripts == 0
    assert [image for image in seen.images if image["naturalWidth"] == 0 or not image["complete"]] == []
    assert sum(image["naturalWidth"] == 128 for image in seen.images) == thumbnails
    return seen.text
