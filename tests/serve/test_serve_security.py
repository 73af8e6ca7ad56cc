"""Issue 29: the served page serves only its user. Host and Origin are checked (DNS rebinding, cross-site
WebSocket hijacking), the page learns no filesystem path, idle pages give their slots back, oversized images
get a clear message, and a non-loopback --host needs --expose. The browser test runs a page from another
origin in Chromium."""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import threading
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from ctmtool.serve import BackgroundServer
from ctmtool.serve.app import create_app, no_paths
from ctmtool.serve.harness import find_browser, launch

ws_client = pytest.importorskip("websockets.sync.client")
ws_exceptions = pytest.importorskip("websockets.exceptions")


def _get(server, path: str, host: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path, headers={"Host": host} if host else {})
    r = conn.getresponse()
    return r.status, r.read()


def _ws(server, **headers):
    return ws_client.connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10,
                             additional_headers=headers or None, legacy=True)


def test_host_and_origin_are_checked(server):
    assert _get(server, "/")[0] == 200 and _get(server, "/info", host=f"localhost:{server.port}")[0] == 200
    for path in ("/", "/info"):  # DNS rebinding: a name that resolves here but is not this server's
        status, body = _get(server, path, host=f"evil.example:{server.port}")
        assert status == 421 and b"unknown host" in body
    with _ws(server, Origin=f"http://127.0.0.1:{server.port}") as ws:  # the page's own origin
        assert json.loads(ws.recv(timeout=10))["op"] == "hello"
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", "null"):
        with pytest.raises(ws_exceptions.InvalidStatus):  # refused during the handshake (403)
            _ws(server, Origin=origin)


def test_allow_origin_opens_the_socket_to_a_named_page(digits_engine):
    srv = BackgroundServer(create_app(digits_engine, allowed_origins=("http://tools.example:3000",)))
    try:
        with _ws(srv, Origin="http://tools.example:3000") as ws:
            assert json.loads(ws.recv(timeout=10))["op"] == "hello"
        with pytest.raises(ws_exceptions.InvalidStatus):
            _ws(srv, Origin="http://evil.example")
    finally:
        srv.stop()


def test_the_page_learns_no_filesystem_path(server, digits_ckpt):
    with _ws(server) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert str(digits_ckpt.parent) not in json.dumps(hello) and "path" not in hello["info"]
    info = json.loads(_get(server, "/info")[1])
    assert str(digits_ckpt.parent) not in json.dumps(info)
    assert no_paths(f"checkpoint {digits_ckpt} does not fit") == f"checkpoint {digits_ckpt.name} does not fit"


def test_idle_pages_time_out_and_give_their_slots_to_new_pages(digits_engine, monkeypatch):
    import ctmtool.serve.app as app_mod

    srv = BackgroundServer(create_app(digits_engine, max_clients=2, idle_timeout=1.5))
    try:
        with _ws(srv) as ws:
            ws.recv(timeout=10)
            m = json.loads(ws.recv(timeout=10))  # nothing sent: closed after 1.5 s with a reason
            assert m["fatal"] and "without a request" in m["message"]
    finally:
        srv.stop()
    monkeypatch.setattr(app_mod, "EVICT_IDLE_S", 0.5)
    srv = BackgroundServer(create_app(digits_engine, max_clients=2))
    try:
        idle = [_ws(srv) for _ in range(2)]  # two idle pages fill every slot
        for ws in idle:
            ws.recv(timeout=10)
        time.sleep(0.7)
        with _ws(srv) as newcomer:  # was "server busy" for good
            assert json.loads(newcomer.recv(timeout=10))["op"] == "hello"
            assert "idle" in json.loads(idle[0].recv(timeout=10))["message"]
        for ws in idle:
            ws.close()
    finally:
        srv.stop()


def test_an_oversized_image_gets_a_clear_message(digits_engine):
    """A 20000x20000 PNG (about 400 kB compressed) was refused as "not an image PIL can read"."""
    from ctmtool.serve.app import BadRequest, Codec

    buf = io.BytesIO()
    Image.new("L", (20000, 20000)).save(buf, format="PNG")
    with pytest.raises(BadRequest, match="decompression bomb.*4096x4096"):
        Codec(digits_engine, 10**7).upload(base64.b64encode(buf.getvalue()).decode())
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, format="PNG")
    with pytest.raises(BadRequest, match="5000x5000 image is too large to decode"):
        Codec(digits_engine, 10**7).upload(base64.b64encode(buf.getvalue()).decode())


def test_a_non_loopback_host_needs_expose(tmp_path):
    from ctmtool.cli.app import app
    from ctmtool.cli.serve import is_loopback
    from tests.cli.conftest import one_error_line, tiny_checkpoint

    ck = tiny_checkpoint(tmp_path / "c.safetensors")
    for host in ("0.0.0.0", "", "192.168.1.20", "::"):
        line = one_error_line(CliRunner().invoke(app, ["serve", "--ckpt", str(ck), "--host", host]))
        assert "--expose" in line, line
    assert (is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
            and is_loopback("127.8.0.1"))
    assert not is_loopback("0.0.0.0") and not is_loopback("")


# ------------------------------------------------------------------------------------------------------------
# In a browser: a page from another origin cannot open the WebSocket (cross-site WebSocket hijacking)

BROWSER = find_browser()

ATTACK = """<!doctype html><script>
window.result = "pending";
const ws = new WebSocket("ws://127.0.0.1:%d/ws");
ws.onmessage = (e) => { window.result = "message: " + e.data.slice(0, 40); };
ws.onerror = () => { if (window.result === "pending") window.result = "refused"; };
ws.onclose = () => { if (window.result === "pending") window.result = "refused"; };
</script>"""


@pytest.fixture
def other_site(server):
    """A page on another origin (another port) that tries to drive the model."""
    html = (ATTACK % server.port).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}/"
    site.shutdown()


@pytest.mark.skipif(BROWSER is None,
                    reason="no Chromium on PATH (apt-get install chromium, or set CTMTOOL_CHROMIUM)")
def test_a_page_from_another_origin_cannot_open_the_websocket(server, other_site):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        browser = launch(pw, BROWSER)
        try:
            page = browser.new_page()
            page.goto(other_site)
            page.wait_for_function("window.result !== 'pending'", timeout=20000)
            assert page.evaluate("window.result") == "refused"
            page.goto(server.url)  # the control: the server's own page does open it
            page.wait_for_function("document.querySelector('#gen') !== null", timeout=20000)
            page.evaluate("""() => { window.own = "pending";
                                     const s = new WebSocket(location.href.replace('http', 'ws') + 'ws');
                                     s.onmessage = (e) => { window.own = JSON.parse(e.data).op; s.close(); };
                                   }""")
            page.wait_for_function("window.own !== 'pending'", timeout=20000)
            assert page.evaluate("window.own") == "hello"
        finally:
            browser.close()
