#!/usr/bin/env python3
"""Screenshots of TensorBoard's HParams tab with headless Chromium, driven over the DevTools protocol.

`chromium --headless --screenshot` cannot click, and the parallel-coordinates and scatter-plot views of
the HParams tab are behind a tab click; this script (standard library only: a minimal WebSocket client
for the DevTools protocol) loads the page, waits until the table lists the expected number of trials,
clicks each requested view and saves a PNG of it.

Usage:
    scripts/cdp_screenshot.py URL --trials N [--chromium chromium] [--width 1600] [--height 1000]
        [--scale 1] [--timeout 120] VIEW=OUT.png [VIEW=OUT.png ...]
    VIEW: table | parallel | scatter

Example:
    scripts/cdp_screenshot.py 'http://127.0.0.1:6006/#hparams' --trials 4 \
        table=docs/tensorboard-hparams.png parallel=docs/tensorboard-hparams-parallel.png

Exit 0 when every view was saved, 1 when the page never showed N trials (or a view never rendered).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

VIEW_TABS = {"table": "TABLE VIEW", "parallel": "PARALLEL COORDINATES VIEW", "scatter": "SCATTER PLOT MATRIX VIEW"}

# Walks the document through every open shadow root (TensorBoard's HParams plugin is Polymer).
_DEEP_JS = r"""
function deepAll(root, pred, out) {
  out = out || [];
  const walk = (node) => {
    if (!node) return;
    if (node.nodeType === 1 && pred(node)) out.push(node);
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of (node.children || [])) walk(child);
    if (node.tagName === 'IFRAME') { try { walk(node.contentDocument); } catch (e) {} }
  };
  walk(root);
  return out;
}
"""


class DevTools:
    """A minimal DevTools-protocol client: one WebSocket to one page target."""

    def __init__(self, ws_url: str, timeout: float = 30.0):
        parsed = urllib.parse.urlparse(ws_url)
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {parsed.path} HTTP/1.1\r\nHost: {parsed.hostname}:{parsed.port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        status, _, self._buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools handshake refused: {status.decode(errors='replace')}")
        self._next_id = 0

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send(self, text: str) -> None:
        payload = text.encode()
        header = bytearray([0x81])  # FIN, text frame
        n = len(payload)
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        header += mask
        self.sock.sendall(bytes(header) + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self) -> dict:
        message = b""
        while True:
            first, second = self._read_exact(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                (n,) = struct.unpack(">H", self._read_exact(2))
            elif n == 127:
                (n,) = struct.unpack(">Q", self._read_exact(8))
            mask = self._read_exact(4) if second & 0x80 else None
            data = self._read_exact(n)
            if mask:
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if opcode in (0x9, 0xA):  # ping / pong: not used by DevTools
                continue
            message += data
            if first & 0x80:
                return json.loads(message)

    def call(self, method: str, **params):
        self._next_id += 1
        self._send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=_DEEP_JS + expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.sock.close()


def _wait(predicate, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None


def _table_rows(tools: DevTools) -> int:
    # The table view is a vaadin-grid whose items are the session groups (one per trial).
    return int(tools.evaluate(
        "deepAll(document, n => n.tagName === 'TF-HPARAMS-TABLE-VIEW').map(t =>"
        " deepAll(t, n => n.tagName === 'VAADIN-GRID').map(g => (g.items || []).length)"
        ".reduce((a, b) => a + b, 0)).reduce((a, b) => a + b, 0)") or 0)


def _click_tab(tools: DevTools, label: str) -> bool:
    return bool(tools.evaluate(
        f"(() => {{ const tabs = deepAll(document, n => n.tagName === 'PAPER-TAB' &&"
        f" n.textContent.trim().toUpperCase() === {json.dumps(label)});"
        f" if (!tabs.length) return false; tabs[0].click(); return true; }})()"))


def _column_labels(url: str) -> list[str]:
    """Returns: the labels of every hparam and metric of the experiment, as the query pane shows them."""
    parsed = urllib.parse.urlparse(url)
    endpoint = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}/data/plugin/hparams/experiment"
    request = urllib.request.Request(endpoint, data=json.dumps({"experimentName": ""}).encode(),
                                     headers={"Content-Type": "application/json"})
    experiment = json.load(urllib.request.urlopen(request, timeout=30))
    labels = [h.get("displayName") or h["name"] for h in experiment.get("hparamInfos", [])]
    labels += [m.get("displayName") or m["name"]["tag"] for m in experiment.get("metricInfos", [])]
    return labels


def _show_columns(tools: DevTools, labels: list[str]) -> list[str]:
    """Ticks the query pane's unticked column checkboxes (TensorBoard shows 5 hparams and 5 metrics)."""
    return tools.evaluate(
        f"(() => {{ const labels = new Set({json.dumps(labels)}); const ticked = [];"
        " for (const pane of deepAll(document, n => n.tagName === 'TF-HPARAMS-QUERY-PANE'))"
        "  for (const box of deepAll(pane, n => n.tagName === 'PAPER-CHECKBOX')) {"
        "   const label = box.textContent.trim();"
        "   if (labels.has(label) && !box.checked) { box.click(); ticked.push(label); } }"
        " return ticked; })()") or []


def _view_ready(tools: DevTools, view: str, trials: int) -> bool:
    if view == "table":
        return _table_rows(tools) >= trials
    if view == "parallel":
        # One polyline per session group in the parallel-coordinates plot's foreground.
        return int(tools.evaluate(
            "deepAll(document, n => n.tagName === 'TF-HPARAMS-PARALLEL-COORDS-PLOT').map(p =>"
            " deepAll(p, n => n.tagName === 'path' && n.closest('.foreground')).length)"
            ".reduce((a, b) => a + b, 0)") or 0) >= trials
    # scatter: one circle per session group in each cell of the matrix
    return int(tools.evaluate(
        "deepAll(document, n => n.tagName === 'TF-HPARAMS-SCATTER-PLOT-MATRIX-PLOT').map(p =>"
        " deepAll(p, n => n.tagName === 'circle').length).reduce((a, b) => a + b, 0)") or 0) >= trials


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("shots", nargs="+", metavar="VIEW=OUT.png")
    parser.add_argument("--trials", type=int, required=True, help="trials the table must list before any shot")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0, help="device scale factor (0.8: more fits)")
    parser.add_argument("--all-columns", action="store_true",
                        help="show every hparam and metric (TensorBoard shows the first 5 of each)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the page and each view")
    args = parser.parse_args(argv)
    shots = []
    for shot in args.shots:
        view, sep, out = shot.partition("=")
        if not sep or view not in VIEW_TABS:
            parser.error(f"{shot!r}: expected VIEW=OUT.png with VIEW in {sorted(VIEW_TABS)}")
        shots.append((view, out))

    profile = tempfile.mkdtemp(prefix="cdp-chromium-")
    browser = subprocess.Popen(
        [args.chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
         "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", f"--window-size={args.width},{args.height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools = None
    try:
        port_file = os.path.join(profile, "DevToolsActivePort")
        if not _wait(lambda: os.path.exists(port_file) and open(port_file).read().strip(), 30):
            print("chromium did not open its DevTools port", file=sys.stderr)
            return 1
        port = int(open(port_file).read().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t.get("type") == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.call("Emulation.setDeviceMetricsOverride", width=args.width, height=args.height,
                   deviceScaleFactor=args.scale, mobile=False)
        tools.call("Page.navigate", url=args.url)
        if not _wait(lambda: _table_rows(tools) >= args.trials, args.timeout):
            print(f"the HParams table never listed {args.trials} trials (saw {_table_rows(tools)})",
                  file=sys.stderr)
            return 1
        if args.all_columns:
            ticked = _show_columns(tools, _column_labels(args.url))
            if ticked:
                print(f"columns shown: {', '.join(ticked)}")
                time.sleep(2)
        for view, out in shots:
            if not _click_tab(tools, VIEW_TABS[view]):
                print(f"no {VIEW_TABS[view]!r} tab on the page", file=sys.stderr)
                return 1
            if not _wait(lambda: _view_ready(tools, view, args.trials), args.timeout):
                print(f"the {view} view never drew {args.trials} trials", file=sys.stderr)
                return 1
            time.sleep(1.5)  # transitions and fonts settle
            shot = tools.call("Page.captureScreenshot", format="png")
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            print(f"{view}: {out}")
        return 0
    finally:
        if tools is not None:
            tools.close()
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
