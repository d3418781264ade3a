"""Test helpers for the SDSS route: a local SAS/SkyServer stand-in on 127.0.0.1 and synthetic SDSS frames.

``SASServer`` serves bytes at SAS-like paths from a threaded http.server bound to 127.0.0.1 on a random
port, counts requests per path, and injects faults per path, consumed one per request:
``"500"`` (HTTP 500), ``"404"`` (always 404 while queued), ``"truncate"`` (full Content-Length, half the
body, connection closed), ``"slow:<s>"`` (sleep before answering), ``"garbage"`` (200 with an HTML body).
A path ending in ``/SqlSearch`` answers with ``sql_csv`` (SkyServer CSV, "#Table1" first line).
"""

from __future__ import annotations

import bz2
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

PIXEL_SCALE_DEG = 0.396 / 3600.0


class SASServer:
    """Threaded local HTTP server with per-path fault injection and request counting."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = defaultdict(list)
        self.requests: Counter = Counter()
        self.sql_csv = ""
        self.sql_queries: list[str] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                path = url.path
                with server.lock:
                    server.requests[path] += 1
                    fault = server.faults[path].pop(0) if server.faults[path] else None
                    if fault == "404":
                        server.faults[path].insert(0, "404")
                try:
                    self._answer(path, url.query, fault)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, code, body, length=None):
                self.send_response(code)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def _answer(self, path, query, fault):
                if fault and fault.startswith("slow:"):
                    time.sleep(float(fault.split(":")[1]))
                if fault == "500":
                    self.close_connection = True
                    return self._send(500, b"internal error")
                if path.endswith("/SqlSearch"):
                    q = urllib.parse.parse_qs(query)
                    server.sql_queries.append(q.get("cmd", [""])[0])
                    return self._send(200, server.sql_csv.encode())
                body = server.files.get(path)
                if body is None or fault == "404":
                    self.close_connection = True
                    return self._send(404, b"not found")
                if fault == "garbage":
                    return self._send(200, b"<html>maintenance</html>")
                if fault == "truncate":
                    self.close_connection = True
                    self._send(200, body[: len(body) // 2], length=len(body))
                    self.wfile.flush()
                    return
                self._send(200, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, rel: str, data: bytes, prefix: str = "/sas") -> str:
        """Serve ``data`` at ``<prefix>/<rel>``; returns the URL path."""
        path = f"{prefix}/{rel}"
        self.files[path] = data
        return path


def frame_header(ra0: float, dec0: float, shape=(1489, 2048), rot_deg: float = 0.0, band: str = "r"):
    """An SDSS-like frame header: TAN, CD matrix at 0.396"/px rotated by ``rot_deg``, nanomaggies."""
    ny, nx = shape
    t = np.radians(rot_deg)
    s = PIXEL_SCALE_DEG
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = (nx + 1) / 2.0, (ny + 1) / 2.0
    h["CRVAL1"], h["CRVAL2"] = ra0, dec0
    # SDSS frames: columns roughly along the scan, east-west parity flipped; a general rotation here
    h["CD1_1"], h["CD1_2"] = -s * np.cos(t), s * np.sin(t)
    h["CD2_1"], h["CD2_2"] = s * np.sin(t), s * np.cos(t)
    h["EQUINOX"], h["RADESYS"] = 2000.0, "ICRS"
    h["FILTER"], h["BUNIT"] = band, "nanomaggy"
    return h


def make_frame(
    ra0: float,
    dec0: float,
    band: str,
    sources=(),
    shape=(1489, 2048),
    rot_deg: float = 0.0,
    noise: float = 0.05,
    seed: int = 0,
    psf_sigma_px: float = 1.3,
) -> bytes:
    """bz2-compressed FITS frame (HDU0 float32 nanomaggies + TAN WCS) with Gaussian point sources.

    ``sources``: (ra, dec, total flux in nanomaggies). Noise is quantised to 0.01 nmgy (as SDSS's lossy
    storage does), which keeps the bz2 file ~2 MB for a full 2048x1489 frame.
    """
    h = frame_header(ra0, dec0, shape, rot_deg, band)
    rng = np.random.default_rng(seed)
    img = np.round(rng.normal(0.0, noise, shape) * 100) / 100
    w = WCS(h)
    for ra, dec, flux in sources:
        x, y = w.all_world2pix(ra, dec, 0)
        x0, y0 = int(round(float(x))), int(round(float(y)))
        r = 12
        ys, xs = np.mgrid[
            max(y0 - r, 0) : min(y0 + r + 1, shape[0]), max(x0 - r, 0) : min(x0 + r + 1, shape[1])
        ]
        g = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * psf_sigma_px**2)) / (2 * np.pi * psf_sigma_px**2)
        img[ys, xs] += flux * g
    hdul = fits.HDUList(
        [
            fits.PrimaryHDU(img.astype(np.float32), header=h),
            fits.ImageHDU(np.ones(shape[1], np.float32), name="CALIBVEC"),
        ]
    )
    import io

    buf = io.BytesIO()
    hdul.writeto(buf)
    return bz2.compress(buf.getvalue(), 9)
