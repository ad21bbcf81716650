"""JupyterLab smoke test: the rerunner's path, end to end.

1. Start JupyterLab (with jupyterlab-myst) headless on loopback, with a random token.
2. Run every code cell of one chapter through the server's kernel API (a session opened on that
   notebook, execute requests over the kernel's websocket), failing on the first error.
3. Open the chapter through the lab URL in headless Chromium and check that JupyterLab rendered
   the MyST directives: theorem boxes (``myst-proof``) and no raw ``{prf:`` directive text.
4. Save a screenshot of the page.

Usage: python tools/lab_check.py notebooks/01-logsumexp-inequalities.ipynb [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
from bs4 import BeautifulSoup
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, token: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"{base}{path}", method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


def start_lab(port: int, token: str) -> subprocess.Popen:
    lab = Path(sys.executable).with_name("jupyter")
    proc = subprocess.Popen(
        [str(lab), "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--ServerApp.token={token}",
         f"--ServerApp.root_dir={ROOT}", "--ServerApp.port_retries=0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            api(base, token, "/api/status")
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("JupyterLab exited during start-up") from None
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("JupyterLab did not answer within 60 s")


async def run_cells(base: str, token: str, notebook: Path) -> int:
    """Execute every code cell in a kernel session on ``notebook``; return the cell count."""
    rel = notebook.resolve().relative_to(ROOT).as_posix()
    session = api(base, token, "/api/sessions", {"path": rel, "name": notebook.name,
                                                  "type": "notebook",
                                                  "kernel": {"name": "python3"}})
    kernel = session["kernel"]["id"]
    ws = await websocket_connect(
        f"{base.replace('http', 'ws')}/api/kernels/{kernel}/channels?token={token}")
    cells = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    for i, cell in enumerate(cells, 1):
        msg_id = uuid.uuid4().hex
        await ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "lab_check",
                       "session": uuid.uuid4().hex, "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": cell.source, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        while True:
            raw = await asyncio.wait_for(ws.read_message(), timeout=300)
            if raw is None:
                raise RuntimeError("the kernel's websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "error":
                raise AssertionError(f"cell {i} of {rel} failed: {msg['content']['ename']}: "
                                     f"{msg['content']['evalue']}")
            if msg["msg_type"] == "execute_reply":
                if msg["content"]["status"] != "ok":
                    raise AssertionError(f"cell {i} of {rel} ended with "
                                         f"{msg['content']['status']}")
                break
    ws.close()
    return len(cells)


def render_in_browser(base: str, token: str, notebook: Path, screenshot: Path | None) -> dict:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("lab check: Chromium not found (Debian: apt-get install chromium)")
    rel = notebook.resolve().relative_to(ROOT).as_posix()
    url = f"{base}/lab/tree/{rel}?token={token}&reset"
    with tempfile.TemporaryDirectory(prefix="dlmath-lab-") as profile:
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                              "--virtual-time-budget=60000", "--dump-dom", url],
                             capture_output=True, text=True, timeout=180).stdout
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            "--virtual-time-budget=60000", f"--screenshot={screenshot}", url],
                           capture_output=True, timeout=180)
    soup = BeautifulSoup(dom, "html.parser")
    proofs = soup.select(".myst-proof")
    # JupyterLab renders cells lazily as they scroll into view; check the rendered ones.
    raw = [n.get_text()[:80] for n in soup.select(".jp-MarkdownCell .jp-RenderedMarkdown")
           if "{prf:" in n.get_text() or ":::" in n.get_text()]
    return {"proof_boxes": len(proofs), "raw_directives": raw}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    port, token = free_port(), secrets.token_hex(16)
    proc = start_lab(port, token)
    base = f"http://127.0.0.1:{port}"
    try:
        count = asyncio.run(run_cells(base, token, args.notebook))
        print(f"lab check: ran {count} code cells of {args.notebook} through the kernel API, "
              f"no error")
        found = render_in_browser(base, token, args.notebook, args.screenshot)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if found["proof_boxes"] == 0 or found["raw_directives"]:
        print(f"lab check: MyST not rendered in JupyterLab: {found}")
        return 1
    print(f"lab check: JupyterLab rendered {found['proof_boxes']} theorem/proof boxes"
          + (f"; screenshot {args.screenshot}" if args.screenshot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
