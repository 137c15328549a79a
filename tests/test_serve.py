"""`synthscale serve`: every endpoint and every bad input against an in-process server on 127.0.0.1."""

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthscale.study.serve import make_server
from synthscale.train import load_generator

PROMPT = "a small red circle above a large blue square"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tiny_study):
    srv = make_server(tiny_study, port=0, quiet=True, max_models=2)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def request(srv, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=60)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, path, body=data, headers=headers or {})
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    ctype = r.getheader("Content-Type", "")
    return r.status, (json.loads(raw) if ctype.startswith("application/json") else raw)


def generate(srv, **fields):
    return request(srv, "POST", "/api/generate", {"prompt": PROMPT, "objective": "flow", "steps": 4, **fields})


def png(b64):
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_page_and_study_and_health(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and b"Race the paradigms" in page and b"/api/generate" in page
    status, study = request(server, "GET", "/api/study")
    assert status == 200 and study["name"] == "tiny" and study["report"] == "/files/report/report.html"
    assert len(study["levels"]) == 2
    assert [m["run"] for m in study["levels"][0]["models"].values()] == ["flow-b", "masked", "autoregressive"]
    assert study["levels"][1]["models"]["flow"]["run"] == "flow-a"
    assert study["levels"][1]["models"]["autoregressive"]["limits"]["steps_range"] == [16, 16]
    assert all(m["run_dir"] is None for lv in study["levels"] for m in lv["models"].values())  # no local paths
    assert request(server, "GET", "/healthz") == (200, b"ok\n")


def test_generate_each_paradigm_matches_the_api(server, tiny_study):
    for objective, steps in (("flow", 4), ("masked", 4), ("autoregressive", 16)):
        status, out = generate(server, objective=objective, steps=steps, n=2, seed=3, level=1, cfg=2.5)
        assert status == 200, out
        assert out["latency_s"] > 0 and out["flops_per_image"] > 0 and out["notes"] == []
        images = np.stack([png(b) for b in out["images"]])
        run = tiny_study / "train" / out["model"]["run"]
        want = load_generator(run, out["model"]["step"]).generate([PROMPT], n=2, steps=steps, cfg=2.5, seed=3)
        assert np.array_equal(images, want)  # the page shows what `synthscale sample` and the API give
        assert out["flops_per_image"] == load_generator(run).sample_flops(steps, 2.5)["generator"]


def test_prompt_notes_and_empty_prompt(server):
    status, out = generate(server, prompt="a red zorp circle")
    assert status == 200 and any("'zorp'" in n and "<unk>" in n for n in out["notes"])
    status, out = generate(server, prompt=" ".join(["red circle"] * 10))
    assert status == 200 and any("20 tokens but the model reads 16" in n for n in out["notes"])
    assert out["used_prompt"] == " ".join(["red circle"] * 8)
    for empty in ("", "   ", "?!"):
        status, out = generate(server, prompt=empty)
        assert status == 400 and "empty" in out["error"]


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"objective": "masked", "steps": 100}, "masked: steps must be in 1..16"),
        ({"objective": "autoregressive", "steps": 4}, "one step per image token"),
        ({"cfg": 50}, "CFG scale must be in 0..20"),
        ({"cfg": "high"}, "'cfg' must be a number"),
        ({"n": 0}, "'n' must be an integer in 1..8"),
        ({"n": 1000}, "'n' must be an integer in 1..8"),
        ({"level": 9}, "'level' must be an integer in 0..1"),
        ({"seed": -1}, "'seed' must be an integer"),
        ({"steps": 2.5}, "'steps' must be an integer"),
        ({"objective": "gan"}, "'objective' must be one of flow, masked, autoregressive"),
        ({"prompt": 42}, "'prompt' must be a string"),
        ({"prompt": "red " * 600}, "at most 1000 are accepted"),
    ],
)
def test_bad_parameters_are_400_with_a_message(server, fields, message):
    status, out = generate(server, **fields)
    assert status == 400 and message in out["error"]


def test_malformed_requests_never_stop_the_server(server):
    assert request(server, "POST", "/api/generate", b"{not json")[0] == 400
    assert request(server, "POST", "/api/generate", [1, 2])[1]["error"] == "the body must be a JSON object"
    assert request(server, "POST", "/api/generate", b"\xff\xfe")[0] == 400
    assert request(server, "POST", "/api/generate", b"x" * 20000)[0] == 413
    assert request(server, "GET", "/api/generate")[0] == 405
    assert request(server, "POST", "/")[0] == 405
    assert request(server, "GET", "/nothing/here")[0] == 404
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:  # no Content-Length
        s.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 411 " in s.recv(4096).split(b"\r\n")[0]
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:  # garbage
        s.sendall(b"\x00\x01 nonsense\r\n\r\n")
        s.recv(4096)
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:  # hang up mid-body
        s.sendall(b"POST /api/generate HTTP/1.1\r\nContent-Length: 500\r\n\r\n{")
    assert request(server, "GET", "/healthz") == (200, b"ok\n")
    assert generate(server)[0] == 200


def test_files_stay_inside_the_study_folder(server, tiny_study, tmp_path):
    status, body = request(server, "GET", "/files/report/report.html")
    assert status == 200 and b"fixture report" in body
    secret = tiny_study.parent / "secret.txt"
    secret.write_text("outside")
    (tiny_study / "escape").unlink(missing_ok=True)
    os.symlink(secret, tiny_study / "escape")
    for path in (
        "/files/../secret.txt",
        "/files/report/../../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2E%2Fsecret.txt",
        "/files/..%5csecret.txt",
        "/files//etc/passwd",
        "/files/%2Fetc%2Fpasswd",
        f"/files/{secret}",
        "/files/escape",
        "/files/report%00.html",
    ):
        status, body = request(server, "GET", path)
        assert status == 403, (path, status)
        assert b"outside" not in json.dumps(body).encode()
    assert request(server, "GET", "/files/%252e%252e/secret.txt")[0] == 404  # decoded once: a literal name
    assert request(server, "GET", "/files/report/missing.html")[0] == 404
    assert request(server, "GET", "/files/report")[0] == 404  # folders are not listed


def test_one_generation_at_a_time_per_model_and_a_size_cap(server):
    app = server.RequestHandlerClass.app
    assert generate(server, level=0)[0] == 200  # loads the model
    entry = app.models.entry(app.choices[0]["flow"])
    g, active, peak, lock = entry["generator"], [0], [0], threading.Lock()
    original = g.generate

    def counting(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)  # long enough for the other requests to arrive meanwhile
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    g.generate = counting
    try:
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda s: generate(server, seed=s, level=0), range(8)))
    finally:
        del g.generate
    assert all(status == 200 for status, _ in outs) and len({o["images"][0] for _, o in outs}) == 8
    assert peak[0] == 1  # queued, never two at once on one model
    assert max(o["queued_s"] for _, o in outs) > 0.05 * 3  # later ones waited for the earlier ones
    for objective, steps in (("flow", 4), ("masked", 4), ("autoregressive", 16)):
        assert generate(server, objective=objective, steps=steps, level=0)[0] == 200
    assert app.models.loaded() <= 2  # max_models=2: the least recently used left


def test_cli_serve_says_loopback_and_stops_on_ctrl_c(tiny_study):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthscale", "serve", str(tiny_study), "--port", "0", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        # as from a terminal: a parent started in the background of a non-interactive shell ignores SIGINT, and its
        # children inherit that, so Python would never turn Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Ctrl-C" in line or not line:
                break
        text = "".join(lines)
        assert "bound to loopback: only this machine can connect" in text, text
        port = int(text.split("http://127.0.0.1:")[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in rest
    finally:
        if proc.poll() is None:  # a failed check above must not leave the server running
            proc.kill()
            proc.wait()
