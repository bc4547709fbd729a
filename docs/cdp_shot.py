"""Screenshot of a page in headless Chromium after running some JavaScript (stdlib only, for make_screenshots.sh).

TensorBoard's Images dashboard shrinks images to its cards; its "Show actual image size" box has no
URL parameter, so this sets the dashboard's ``_actualSize`` through the DevTools protocol first.

    python docs/cdp_shot.py URL OUT.png WIDTH HEIGHT [JAVASCRIPT]
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

#: sets ``_actualSize`` on every element that has it, through shadow roots
ACTUAL_SIZE = """
(() => {
  let n = 0;
  const walk = (root) => {
    for (const el of root.querySelectorAll('*')) {
      if ('_actualSize' in el) { el._actualSize = true; n++; }
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return n;
})()
"""


class DevTools:
    """A minimal WebSocket client (RFC 6455 text frames) for one DevTools page."""

    def __init__(self, ws_url: str) -> None:
        host_port, path = ws_url[len("ws://") :].split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += self.sock.recv(1 << 20)
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _recv_message(self) -> str:
        parts = []
        while True:
            b0, b1 = self._recv_exact(2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(self._recv_exact(2), "big")
            elif length == 127:
                length = int.from_bytes(self._recv_exact(8), "big")
            parts.append(self._recv_exact(length))
            if b0 & 0x80:
                return b"".join(parts).decode()

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(payload)
        header = bytes([0x81]) + (
            bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
            if n < 65536
            else bytes([0x80 | 127]) + n.to_bytes(8, "big")
        )
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            message = json.loads(self._recv_message())
            if message.get("id") == self.next_id:
                return message.get("result", {})


def main() -> None:
    url, out, width, height = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    script = sys.argv[5] if len(sys.argv) > 5 else ACTUAL_SIZE
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profile = tempfile.mkdtemp()
    proc = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
         f"--remote-debugging-port={port}", f"--window-size={width},{height}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2))
                page = next(p for p in pages if p.get("type") == "page")
                break
            except Exception:
                time.sleep(0.3)
        tools = DevTools(page["webSocketDebuggerUrl"])
        time.sleep(8)  # TensorBoard loads its data
        tools.call("Runtime.evaluate", expression=script)
        time.sleep(4)
        shot = tools.call("Page.captureScreenshot", format="png")
        with open(out, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
