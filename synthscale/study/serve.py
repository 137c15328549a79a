"""`synthscale serve STUDY_DIR`: a local web page that races the paradigms. Type a prompt, pick a training-compute
level and sampling settings; each paradigm's best model at that compute (study/pick.py) draws it, and the page
shows the pictures with the measured latency and the analytic FLOPs per image. The study folder (its report
included) is served read-only under /files/.

Standard library only (http.server): one thread per connection; models load on first use and stay in memory up
to `max_models` (least recently used leaves first); one generation at a time per model, later requests wait their
turn, and at most MAX_WAITING requests wait at once (more get 503). Binds to loopback unless told otherwise.

    GET  /                  the page
    GET  /api/study         levels, each paradigm's model per level, sampling limits
    POST /api/generate      {"prompt", "objective", "level" (index), "seed", "n", "steps", "cfg"} → images (PNG,
                            base64), latency_s, flops_per_image, notes (unknown or truncated words)
    GET  /files/<path>      a file inside the study folder (the report: /files/report/report.html)
    GET  /healthz           "ok"
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import math
import mimetypes
import shutil
import socket
import sys
import threading
import time
import traceback
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import torch

from synthscale.study.pick import Choice, best_models, compute_levels, use_chosen_temperature
from synthscale.study.serve_page import PAGE

MAX_BODY = 16 * 1024  # bytes of a generate request
MAX_PROMPT_CHARS = 1000  # longer text is refused before tokenizing (the tokenizer cuts far earlier anyway)
MAX_IMAGES = 8  # per request and model
MAX_WAITING = 64  # generate requests in the server at once; more are told to retry (503)
REPORT = "report/report.html"


class BadRequest(ValueError):
    """A request the server refuses with 400 (or `status`); the message is shown on the page."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST, notes: list[str] | None = None):
        super().__init__(message)
        self.status, self.notes = status, notes or []


class ModelCache:
    """Generators loaded on first use, at most `max_models` kept (least recently used leaves first); each has a
    lock so one generation runs at a time per model and later requests queue behind it."""

    def __init__(self, max_models: int, device: torch.device):
        if max_models < 1:
            raise ValueError(f"--max-models must be ≥ 1, got {max_models}")
        self.max_models, self.device = max_models, device
        self._entries: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def entry(self, choice: Choice) -> dict[str, Any]:
        key = (choice.run, choice.step, choice.weights)
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                e = self._entries[key] = {"lock": threading.Lock(), "generator": None, "choice": choice}
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_models:  # a request still holding an evicted one keeps it alive
                self._entries.popitem(last=False)
        return e

    def loaded(self) -> int:
        with self._lock:
            return sum(e["generator"] is not None for e in self._entries.values())

    def generate(self, choice: Choice, prompt: str, n: int, steps: int, cfg: float, seed: int) -> dict[str, Any]:
        from synthscale.train import load_generator

        e = self.entry(choice)
        t0 = time.perf_counter()
        with e["lock"]:
            waited = time.perf_counter() - t0
            load_s = 0.0
            if e["generator"] is None:
                t1 = time.perf_counter()
                e["generator"] = load_generator(choice.run_dir, choice.step, choice.weights, device=self.device)
                use_chosen_temperature(e["generator"], choice)
                load_s = time.perf_counter() - t1
            g = e["generator"]
            t2 = time.perf_counter()
            images = g.generate([prompt], n=n, steps=steps, cfg=cfg, seed=seed)
            if g.device.type == "cuda":
                torch.cuda.synchronize(g.device)
            latency = time.perf_counter() - t2
        return {"images": images, "latency_s": latency, "queued_s": waited, "load_s": load_s, "generator": g}


class StudyApp:
    """The study's levels and choices (read once at start), the model cache and the request logic."""

    def __init__(self, study_dir: str | Path, device: torch.device, max_models: int = 6):
        from synthscale.study.compare import load_study
        from synthscale.train.generator import sampling_limits

        self.root = Path(study_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"{study_dir} is not a folder; pass a study folder made by `synthscale study`")
        self.levels = compute_levels(self.root)
        if not self.levels:
            raise FileNotFoundError(f"{study_dir} has no evaluated runs with checkpoints; run the study first")
        self.choices = [best_models(self.root, lv) for lv in self.levels]
        self.limits = {}
        for by_obj in self.choices:
            for c in by_obj.values():
                if c.run not in self.limits:
                    self.limits[c.run] = sampling_limits(c.run_dir)
        self.name = load_study(self.root).name
        self.models = ModelCache(max_models, device)
        self.device = device
        self.waiting = threading.BoundedSemaphore(MAX_WAITING)

    def study(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "device": str(self.device),
            "report": f"/files/{REPORT}" if (self.root / REPORT).is_file() else None,
            "levels": [
                {
                    "index": i,
                    "train_flops": lv,
                    "models": {
                        obj: {**c.as_dict(), "limits": self.limits[c.run], "run_dir": None}
                        for obj, c in self.choices[i].items()
                    },
                }
                for i, lv in enumerate(self.levels)
            ],
        }

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        req = self._parse(body)
        choice, limits = req["choice"], self.limits[req["choice"].run]
        self._check_settings(choice.objective, limits, req["steps"], req["cfg"])
        if not self.waiting.acquire(blocking=False):
            raise BadRequest(
                "the server is busy (too many requests waiting); try again shortly", HTTPStatus.SERVICE_UNAVAILABLE
            )
        try:
            out = self.models.generate(choice, req["prompt"], req["n"], req["steps"], req["cfg"], req["seed"])
        finally:
            self.waiting.release()
        g = out.pop("generator")
        check = g.check_prompt(req["prompt"])
        flops = g.sample_flops(req["steps"], req["cfg"])
        return {
            "objective": choice.objective,
            "label": choice.label(),
            "model": {**choice.as_dict(), "run_dir": None},
            "prompt": req["prompt"],
            "used_prompt": check.used,
            "notes": check.notes(),
            "steps": req["steps"],
            "cfg": req["cfg"],
            "seed": req["seed"],
            "n": req["n"],
            "latency_s": out["latency_s"],
            "queued_s": out["queued_s"],
            "load_s": out["load_s"],
            "flops_per_image": flops["generator"],
            "text_encoder_flops": flops["text_encoder"],
            "images": [_png_base64(im) for im in out["images"]],
        }

    def _parse(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BadRequest(f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS} are accepted")
        level = _integer(body, "level", 0, len(self.levels) - 1, default=len(self.levels) - 1)
        objective = body.get("objective")
        if objective not in self.choices[level]:
            names = ", ".join(self.choices[level])
            raise BadRequest(f"'objective' must be one of {names} at this compute level, got {objective!r}")
        choice = self.choices[level][objective]
        steps = _integer(body, "steps", 1, 10**6, default=choice.steps)
        cfg = body.get("cfg", choice.cfg_scale)
        if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
            raise BadRequest(f"'cfg' must be a number, got {cfg!r}")
        n = _integer(body, "n", 1, MAX_IMAGES, default=1)
        seed = _integer(body, "seed", 0, 2**63 - 1, default=0)
        # an empty prompt is refused before any model loads (the tokenizer would find no word in it)
        if not any(ch.isalnum() for ch in prompt):
            raise BadRequest("the prompt is empty: type a caption, e.g. 'a small red circle above a large blue square'")
        return {"prompt": prompt, "choice": choice, "steps": steps, "cfg": float(cfg), "n": n, "seed": seed}

    @staticmethod
    def _check_settings(objective: str, limits: dict[str, Any], steps: int, cfg: float) -> None:
        low, high = limits["steps_range"]
        if steps < low or (high is not None and steps > high):
            allowed = f"{low}..{high}" if high is not None else f"≥ {low}"
            fixed = " (one step per image token)" if low == high else ""
            raise BadRequest(f"{objective}: steps must be in {allowed}{fixed}, got {steps}")
        lo, hi = limits["cfg_range"]
        if not lo <= cfg <= hi:
            raise BadRequest(f"{objective}: CFG scale must be in {lo:g}..{hi:g}, got {cfg:g}")

    def file(self, url_path: str) -> Path:
        """The study file a /files/ URL names; BadRequest for anything that could leave the folder."""
        rel = unquote(url_path[len("/files/") :], errors="strict")
        parts = PurePosixPath(rel).parts
        if not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\x00" in rel or ".." in parts or ":" in rel:
            raise BadRequest("that path is not inside the study folder", HTTPStatus.FORBIDDEN)
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root):  # a symbolic link pointing out of the study
            raise BadRequest("that path is not inside the study folder", HTTPStatus.FORBIDDEN)
        if not path.is_file():
            raise BadRequest(f"no file {rel!r} in the study folder", HTTPStatus.NOT_FOUND)
        return path


def _integer(body: dict[str, Any], key: str, low: int, high: int, default: int) -> int:
    v = body.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise BadRequest(f"{key!r} must be an integer in {low}..{high}, got {v!r}")
    return v


def _png_base64(image) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Handler(BaseHTTPRequestHandler):
    server_version = "synthscale"
    app: StudyApp  # set on the subclass `make_server` builds
    quiet = False

    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def do_HEAD(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "HEAD is not supported; use GET"})

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/api/study":
            self._send(HTTPStatus.OK, self.app.study())
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        elif path.startswith("/files/"):
            self._send_file(self.app.file(path))
        elif path == "/api/generate":
            raise BadRequest("use POST with a JSON body for /api/generate", HTTPStatus.METHOD_NOT_ALLOWED)
        else:
            raise BadRequest(f"no page {path!r}", HTTPStatus.NOT_FOUND)

    def _post(self) -> None:
        if urlsplit(self.path).path != "/api/generate":
            raise BadRequest("only /api/generate takes POST", HTTPStatus.METHOD_NOT_ALLOWED)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise BadRequest("a JSON body with a Content-Length is required", HTTPStatus.LENGTH_REQUIRED)
        if int(length) > MAX_BODY:
            raise BadRequest(f"the request body is over {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        self._send(HTTPStatus.OK, self.app.generate(body))

    def _guard(self, handle) -> None:
        """Every failure becomes a JSON answer; nothing a request does stops the server."""
        try:
            handle()
        except BadRequest as e:
            self._send(e.status, {"error": str(e), "notes": e.notes})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client left
        except Exception as e:  # a bug, not bad input: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _send(self, status: HTTPStatus, body: Any, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _send_file(self, path: Path) -> None:
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with path.open("rb") as f:
            shutil.copyfileobj(f, self.wfile)

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(
    study_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: torch.device | str = "cpu",
    max_models: int = 6,
    quiet: bool = False,
) -> ThreadingHTTPServer:
    """A server ready for `serve_forever` (port 0 picks a free port: see `server.server_address`)."""
    app = StudyApp(study_dir, torch.device(device), max_models)
    handler = type("StudyHandler", (Handler,), {"app": app, "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True  # Ctrl-C does not wait for a generation in flight
    return server


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


def serve(
    study_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: torch.device | str = "cpu",
    max_models: int = 6,
) -> None:
    """Serve until Ctrl-C; prints where, and who can connect."""
    server = make_server(study_dir, host, port, device, max_models)
    app: StudyApp = server.RequestHandlerClass.app
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    print(
        f"serving study {app.name!r} ({len(app.levels)} compute levels, device {app.device}) at http://{shown}:{bound_port}/"
    )
    if is_loopback(host):
        print("bound to loopback: only this machine can connect (pass --host 0.0.0.0 to share on your network)")
    else:
        print(f"bound to {host}: other machines that can reach it can use it (there is no login); Ctrl-C stops it")
    print("press Ctrl-C to stop", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("\nstopping: Ctrl-C received", flush=True)
    finally:
        server.server_close()
    print("stopped")
