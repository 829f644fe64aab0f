"""Open every page of the built book in headless Chromium and say what a reader would see.

    python scripts/check_book.py                       # site/, every page
    python scripts/check_book.py --screenshots shots/  # also PNGs: each page's top, first figure, first equation

``site/`` is served on 127.0.0.1; each HTML page is loaded in Chromium (Debian's ``chromium``:
``apt-get install -y chromium``), driven over the DevTools protocol with tornado's websocket
client (tornado comes with Jupyter). Per page it prints:

- ``status``: the HTTP status of the page;
- ``errors``: console errors, uncaught exceptions and failed requests;
- ``offsite``: requests to anything but the local server (the book must need no network);
- ``maths``: equations typeset by MathJax / equations on the page, MathJax errors, and text
  outside code that still holds ``$`` or ``\\(`` (maths left raw);
- ``images``: images shown (``naturalWidth > 0``) / images, and the broken ones;
- ``links``: links to pages of the site that do not answer 200.

Exits 1 if any page has a problem: status not 200, an error, an off-site request, an equation
not typeset, a MathJax error, raw maths, a broken image or a broken link.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import http.server
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin

from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]

# Waits for MathJax (when the page loads it) to finish typesetting, then reads the page.
INSPECT_PAGE = r"""
(async () => {
  const deadline = Date.now() + 60000;
  while (window.MathJax && !(MathJax.isReady && MathJax.Hub) && Date.now() < deadline) {
    await new Promise(r => setTimeout(r, 100));
  }
  if (window.MathJax && MathJax.Hub) await new Promise(r => MathJax.Hub.Queue(r));
  const skip = "script, style, pre, code, textarea, .MathJax, .MathJax_Display, .MathJax_Preview";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const raw = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent;
    if ((text.includes("$") || text.includes("\\(") || text.includes("\\[")) &&
        !node.parentElement.closest(skip)) raw.push(text.trim().slice(0, 80));
  }
  const images = [...document.images];
  return {
    status: performance.getEntriesByType("navigation")[0].responseStatus,
    equations: document.querySelectorAll('script[type^="math/tex"]').length,
    typeset: document.querySelectorAll("span.MathJax, span.MathJax_SVG").length,
    math_errors: document.querySelectorAll(".MathJax .merror, .MathJax_Error").length,
    raw_maths: raw,
    images: images.length,
    images_shown: images.filter(i => i.complete && i.naturalWidth > 0).length,
    broken_images: images.filter(i => !(i.complete && i.naturalWidth > 0))
                         .map(i => i.getAttribute("src").slice(0, 80)),
    links: [...document.querySelectorAll("a[href]")].map(a => a.href),
  };
})()
"""

SCROLL_TO = r"""
(() => {
  const target = [...document.querySelectorAll("%s")].find(e => %s);
  if (!target) return false;
  target.scrollIntoView({block: "center"});
  return true;
})()
"""


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a page closed mid-transfer
            super().handle_error(request, client_address)


def serve(site: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    server = Server(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Start headless Chromium on a fresh profile; return it and its DevTools websocket URL."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium on PATH (Debian: apt-get install -y chromium)")
    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", "--window-size=1280,900",
         f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
        if time.monotonic() > deadline or browser.poll() is not None:
            browser.kill()
            sys.exit("chromium did not open its DevTools port")
        time.sleep(0.1)
    port, path = port_file.read_text().splitlines()[:2]
    return browser, f"ws://127.0.0.1:{port}{path}"


class DevTools:
    """The DevTools protocol over one websocket, with flattened sessions for pages."""

    def __init__(self, connection):
        self.connection = connection
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future] = {}
        self.listeners: list = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        while (message := await self.connection.read_message()) is not None:
            message = json.loads(message)
            if "id" in message and message["id"] in self.replies:
                self.replies.pop(message["id"]).set_result(message)
            for listener in self.listeners:
                listener(message)

    async def send(self, method, session=None, **params):
        call_id = next(self.ids)
        self.replies[call_id] = asyncio.get_running_loop().create_future()
        call = {"id": call_id, "method": method, "params": params}
        if session:
            call["sessionId"] = session
        await self.connection.write_message(json.dumps(call))
        reply = await asyncio.wait_for(self.replies[call_id], 120)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]


async def check_page(tools: DevTools, url: str, base: str, shots: Path | None, name: str):
    target = (await tools.send("Target.createTarget", url="about:blank"))["targetId"]
    session = (await tools.send("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
    errors, offsite, requested, loaded = [], [], {}, asyncio.Event()

    def listen(message):
        if message.get("sessionId") != session:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] == "error":
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                 for a in params["args"])[:200])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append("exception: " + details.get("exception", {}).get(
                "description", details.get("text", ""))[:200])
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            entry = params["entry"]
            errors.append(f"log: {entry['text'][:200]} {entry.get('url', '')}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"request failed: {params.get('errorText')} "
                          f"{requested.get(params['requestId'], '')}")
        elif method == "Network.requestWillBeSent":
            request_url = requested[params["requestId"]] = params["request"]["url"]
            if not request_url.startswith((base, "data:", "blob:", "about:")):
                offsite.append(request_url)
        elif method == "Page.loadEventFired":
            loaded.set()

    tools.listeners.append(listen)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            await tools.send(f"{domain}.enable", session)
        await tools.send("Page.navigate", session, url=url)
        await asyncio.wait_for(loaded.wait(), 60)
        found = (await tools.send("Runtime.evaluate", session, expression=INSPECT_PAGE,
                                  awaitPromise=True, returnByValue=True))["result"]["value"]
        if shots is not None:
            await screenshot(tools, session, shots / f"{name}-top.png")
            for what, selector, test in (("figure", "img", "e.naturalWidth > 200"),
                                         ("maths", "div.MathJax_Display", "true")):
                scrolled = await tools.send("Runtime.evaluate", session, returnByValue=True,
                                            expression=SCROLL_TO % (selector, test))
                if scrolled["result"]["value"]:
                    await screenshot(tools, session, shots / f"{name}-{what}.png")
    finally:
        tools.listeners.remove(listen)
        await tools.send("Target.closeTarget", targetId=target)
    found.update(errors=errors, offsite=offsite)
    return found


async def screenshot(tools, session, path: Path):
    await asyncio.sleep(0.3)  # let the scroll settle
    shot = await tools.send("Page.captureScreenshot", session, format="png")
    path.write_bytes(base64.b64decode(shot["data"]))


def broken_links(links: set[str], base: str) -> dict[str, int | str]:
    """Links into the site that do not answer 200 (fragments dropped)."""
    broken = {}
    for link in sorted(links):
        try:
            with urllib.request.urlopen(link, timeout=10) as reply:
                if reply.status != 200:
                    broken[link] = reply.status
        except urllib.error.HTTPError as error:
            broken[link] = error.code
        except urllib.error.URLError as error:
            broken[link] = str(error.reason)
    return broken


async def check_site(site: Path, shots: Path | None, only: str | None) -> int:
    server, base = serve(site)
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html")
                   if "assets/mathjax" not in p.as_posix() and (only or "") in p.as_posix())
    with tempfile.TemporaryDirectory(prefix="book-chromium-") as profile:
        browser, websocket = start_chromium(Path(profile))
        try:
            tools = DevTools(await websocket_connect(websocket, max_message_size=1 << 28))
            results = {}
            for page in pages:
                name = page.removesuffix("/index.html").removesuffix(".html").replace("/", "_")
                results[page] = await check_page(tools, urljoin(base, page), base, shots, name)
            tools.connection.close()
        finally:
            browser.terminate()
            browser.wait(10)
    site_links = {urldefrag(link).url for found in results.values() for link in found["links"]
                  if link.startswith(base)}
    broken = broken_links(site_links, base)
    server.shutdown()

    problems = 0
    for page, found in results.items():
        page_broken = sorted({urldefrag(link).url for link in found["links"]} & broken.keys())
        bad = (found["status"] != 200 or found["errors"] or found["offsite"]
               or found["typeset"] < found["equations"] or found["math_errors"]
               or found["raw_maths"] or found["broken_images"] or page_broken)
        problems += bool(bad)
        print(f"{'FAIL' if bad else 'ok  '} {page}: status {found['status']}, "
              f"{len(found['errors'])} errors, {len(found['offsite'])} off-site requests, "
              f"maths {found['typeset']}/{found['equations']} typeset "
              f"({found['math_errors']} errors, {len(found['raw_maths'])} raw), "
              f"images {found['images_shown']}/{found['images']} shown, "
              f"{len(page_broken)} broken links")
        for label, items in (("error", found["errors"]), ("off-site", found["offsite"]),
                             ("raw maths", found["raw_maths"]),
                             ("broken image", found["broken_images"]),
                             ("broken link", [f"{link} ({broken[link]})" for link in page_broken])):
            for item in items[:10]:
                print(f"       {label}: {item}")
    print(f"{len(results)} pages, {problems} with problems")
    return 1 if problems else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site", help="the built site (default site/)")
    parser.add_argument("--screenshots", type=Path, help="folder for PNG screenshots of each page")
    parser.add_argument("--only", help="check only the pages whose path contains this text")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").exists():
        sys.exit(f"no {args.site}/index.html: build the book first (python scripts/build_book.py)")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    return asyncio.run(check_site(args.site, args.screenshots, args.only))


if __name__ == "__main__":
    sys.exit(main())
