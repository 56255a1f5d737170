"""Test helpers for the data layer: a local HTTP server with scripted failures, and tiny archives / images."""
from __future__ import annotations

import io
import threading
import time
import zipfile
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


class ScriptedServer:
    """Serves ``files`` (url path -> bytes). ``script[path]`` is a list of behaviours consumed one per request:
    ``"ok"``, ``"404"``, ``"500"``, ``"drop"`` (send half the body then close), ``"wrong"`` (one byte flipped),
    ``"norange"`` (ignore Range, send 200). Hostile ones: ``"trickle"`` (one byte every ``trickle_interval`` s),
    ``"badlength"`` (``Content-Length: abc``), ``"badrange"`` (206 whose Content-Range starts at 0, whatever was
    asked), ``"endless"`` (no Content-Length, bytes until the client hangs up), ``"html"`` (200 with a small HTML
    page instead of the file), ``"redirect_ftp"`` (302 to an ftp:// URL). After the script runs out every request is ``"ok"``.
    ``requests`` logs (path, Range header or None) for every request."""

    def __init__(self, files: dict[str, bytes], script: dict[str, list[str]] | None = None,
                 trickle_interval: float = 0.05):
        self.files = dict(files)
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        self.trickle_interval = trickle_interval

    def next_behaviour(self, path: str) -> str:
        with self.lock:
            queue = self.script.get(path)
            return queue.pop(0) if queue else "ok"


def _handler(state: ScriptedServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            state.requests.append((path, rng))
            behaviour = state.next_behaviour(path)
            body = state.files.get(path)
            if body is None or behaviour == "404":
                self._reply(404, b"not found")
                return
            if behaviour == "500":
                self._reply(500, b"server error")
                return
            if behaviour == "wrong":
                body = bytes([body[0] ^ 0xFF]) + body[1:]
            if behaviour == "redirect_ftp":
                self.send_response(302)
                self.send_header("Location", "ftp://127.0.0.1/etc/hostname")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if behaviour in ("badlength", "endless", "html"):
                self._hostile(behaviour, body)
                return
            start = 0
            if rng and behaviour != "norange":
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(body):
                    self._reply(416, b"")
                    return
            part = body[start:]
            self.send_response(206 if start or behaviour == "badrange" else 200)
            if behaviour == "badrange":  # the whole file, labelled as a part
                part = body
                self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(part)))
            if start and behaviour != "badrange":
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if behaviour == "drop":
                self.wfile.write(part[: len(part) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if behaviour == "trickle":
                try:
                    for i in range(len(part)):
                        self.wfile.write(part[i:i + 1])
                        self.wfile.flush()
                        time.sleep(state.trickle_interval)
                except OSError:  # the client gave up: end this thread so the server can shut down
                    pass
                self.close_connection = True
                return
            self.wfile.write(part)

        def _hostile(self, behaviour: str, body: bytes):
            self.close_connection = True
            self.send_response(200)
            if behaviour == "html":
                page = b"<!DOCTYPE html><html><body>Please sign in</body></html>"
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            if behaviour == "badlength":
                self.send_header("Content-Length", "abc")
            self.end_headers()
            try:
                while True:  # badlength: the body, then more; endless: until the client hangs up
                    self.wfile.write(body)
                    self.wfile.flush()
                    if behaviour == "badlength":
                        return
            except OSError:
                pass

        def _reply(self, code: int, body: bytes):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextmanager
def serve(files: dict[str, bytes], script: dict[str, list[str]] | None = None, **options):
    """``with serve({"/a.zip": data}) as (base_url, state): ...`` on 127.0.0.1, a free port, in a thread;
    ``options`` go to :class:`ScriptedServer` (``trickle_interval``)."""
    state = ScriptedServer(files, script, **options)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def png_bytes(color=(200, 100, 150), size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def class_folder_zip(top: str, classes: dict[str, int], size=(16, 16)) -> bytes:
    """A zip of ``top/<class>/img_<i>.png`` with ``classes[class]`` small random PNGs each."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls, n in classes.items():
            for i in range(n):
                arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
                img = io.BytesIO()
                Image.fromarray(arr).save(img, format="PNG")
                zf.writestr(f"{top}/{cls}/img_{i}.png", img.getvalue())
    return buf.getvalue()


def write_png(path: Path, color=(200, 100, 150), size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color, size))
    return path


class MultiCropTiles:
    """Bundled tiles (every ``step``-th, at most ``n``) with *random* views drawn at load time — 2 globals of 32 px
    and 1 local of 16 px — so the data RNG is part of what a training resume must restore."""

    def __init__(self, n: int = 8, step: int = 11):
        from torchvision import transforms as T

        from histokit.paths import BUNDLED_TILES_DIR

        self.paths = sorted(BUNDLED_TILES_DIR.glob("*/*.png"))[::step][:n]
        norm = [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
        self.g = T.Compose([T.RandomResizedCrop(32, scale=(0.4, 1)), T.RandomHorizontalFlip(), *norm])
        self.loc = T.Compose([T.RandomResizedCrop(16, scale=(0.05, 0.4)), *norm])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        im = Image.open(self.paths[i]).convert("RGB")
        return [self.g(im), self.g(im), self.loc(im)], 0, i
