"""ctmtool.serve.app over a real socket: frames, every kind of bad request answered, busy server, closed
sockets."""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

ws_client = pytest.importorskip("websockets.sync.client")


def _connect(server):
    ws = ws_client.connect(server.url.replace("http", "ws") + "ws", open_timeout=10, legacy=True)
    hello = json.loads(ws.recv(timeout=10))
    return ws, hello


def _ask(ws, **msg):
    """Send one request; return the next frame or error (skipping walk frames)."""
    ws.send(json.dumps(msg))
    while True:
        m = json.loads(ws.recv(timeout=20))
        if m["op"] in ("frame", "error") and not m.get("walk"):
            return m


def _png(w, h, mode="L"):
    buf = io.BytesIO()
    Image.new(mode, (w, h), (128,) * len(mode)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_page_and_info(server):
    page = urllib.request.urlopen(server.url, timeout=10).read().decode()
    assert "<canvas id=\"gen\"" in page and "WebSocket" in page
    info = json.loads(urllib.request.urlopen(server.url + "info", timeout=10).read())
    assert info["kind"] == "ctm" and info["data_shape"] == [1, 8, 8] and info["editor"] == ["edit"]


def test_generate_frame_is_the_engine_sample(server, digits_engine):
    ws, hello = _connect(server)
    with ws:
        assert hello["op"] == "hello" and hello["info"]["is_image"]
        m = _ask(ws, op="generate", id=7, seed=4, phase=0.5, nfe=1, gamma=0)
        assert m["op"] == "frame" and m["id"] == 7 and m["shape"] == [8, 8, 1] and m["model_ms"] > 0
        got = np.frombuffer(base64.b64decode(m["pixels"]), np.uint8).reshape(8, 8)
        x, _ = digits_engine.generate(4, 0.5)
        ref = ((x[0, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        assert np.array_equal(got, ref)
        e = _ask(ws, op="edit", id=8, pixels=base64.b64encode(bytes(range(64))).decode(), strength=0.3)
        assert e["op"] == "frame" and e["target"] == "edit" and e["id"] == 8


@pytest.mark.parametrize("msg, words", [
    ({"op": "nope"}, "unknown request"),
    ({"op": "generate", "nfe": 100}, "nfe = 100 is outside"),
    ({"op": "generate", "gamma": "x"}, "gamma must be a number"),
    ({"op": "edit", "pixels": base64.b64encode(bytes(10)).decode()}, "expected 8x8x1 = 64"),
    ({"op": "edit", "pixels": "%%%"}, "not valid base64"),
    ({"op": "edit", "points": [[0, 0]]}, "expected 64 bytes"),
    ({"op": "upload", "data": base64.b64encode(b"hello").decode()}, "not an image"),
    ({"op": "upload", "data": "A" * 40_000}, "is over the 20 kB limit"),
    ({"op": "upload", "data": _png(30, 20)}, "30x20; this model works on square 8x8"),
])
def test_bad_requests_get_a_message_and_the_socket_keeps_serving(server, msg, words):
    ws, _ = _connect(server)
    with ws:
        m = _ask(ws, id=1, **msg)
        assert m["op"] == "error" and words.split("expected 64")[0] in m["message"], m
        assert _ask(ws, op="generate", id=2)["op"] == "frame"


def test_upload_of_a_square_image_is_resized_and_edited(server):
    ws, _ = _connect(server)
    with ws:
        ws.send(json.dumps({"op": "upload", "id": 3, "data": _png(64, 64, "RGB"), "strength": 0.5}))
        first = json.loads(ws.recv(timeout=20))
        assert first["op"] == "input" and first["shape"] == [8, 8, 1]
        assert np.all(np.frombuffer(base64.b64decode(first["pixels"]), np.uint8) == 128)
        assert json.loads(ws.recv(timeout=20))["target"] == "edit"


def test_not_json_and_busy_server_and_closed_sockets(server):
    a, _ = _connect(server)
    a.send("{not json")
    assert "not valid JSON" in json.loads(a.recv(timeout=10))["message"]
    a.send(json.dumps({"op": "walk", "play": True, "step": 0.1}))
    assert json.loads(a.recv(timeout=20))["walk"]
    b, _ = _connect(server)
    c, _ = _connect(server)
    d = ws_client.connect(server.url.replace("http", "ws") + "ws", open_timeout=10, legacy=True)
    m = json.loads(d.recv(timeout=10))
    assert m["op"] == "error" and "server busy" in m["message"] and "limit 3" in m["message"]
    d.close()
    a.close()  # mid-walk, frames unacknowledged
    b.close()
    c.close()
    e, hello = _connect(server)  # the server is still up and has freed the slots
    with e:
        assert hello["op"] == "hello" and _ask(e, op="generate", id=1)["op"] == "frame"
