"""The web app of `ctmtool serve`: one static page, a JSON description, and a WebSocket that pushes frames.

Protocol (JSON text messages). Page -> server:
  {"op": "generate", "id", "seed", "phase", "nfe", "gamma", "label"}       one sample at a point of the walk
  {"op": "walk", "play": bool, "seed", "phase", "step", "nfe", "gamma", "label"}   stream the latent walk
  {"op": "ack"}                                                            a walk frame was drawn
  {"op": "edit" | "translate", "id", "pixels" (base64 uint8 H x W x C) | "points" [[x, y], ...],
   "strength", "seed", "nfe", "gamma", "label"}
  {"op": "upload", "id", "data" (base64 file bytes), ...as edit}            an image file to edit / translate
Server -> page: {"op": "hello", "info"}, {"op": "frame", "target": "gen" | "edit", "id", "pixels" | "points",
  "model_ms", "server_ms", "phase"}, {"op": "input", "pixels"} (a decoded upload), {"op": "error", "id",
  "message"}.

The page serves only its user: every HTTP request must name a loopback host (or one of `allowed_hosts`) in its
Host header, against DNS rebinding, and a WebSocket must come from the page's own origin (or one of
`allowed_origins`), against cross-site WebSocket hijacking. Messages to the page carry no filesystem paths.
A page that sends nothing for `idle_timeout` seconds is closed; when every slot is taken, the page idle the
longest (for at least `EVICT_IDLE_S`) gives its slot to the newcomer, so idle pages cannot lock the user out.

Requests are coalesced per connection (only the newest edit and the newest generate wait), and the walk
keeps at most four frames unacknowledged, so a slow client never piles work up. Any bad request is answered
with an error message; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import re
import time
from importlib import resources

import numpy as np
import torch

from ctmtool.errors import UserError

WALK_CREDITS = 4        # walk frames in flight before the page acknowledges one (it acks when it paints)
MAX_POINTS = 4096       # points per 2-D request
GEN_POINTS = 1000       # points per generated 2-D frame
MAX_PIXELS = 4096 * 4096  # largest upload decoded
EVICT_IDLE_S = 10.0     # a full server hands the slot of a page idle this long to a new page
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")
_PATH = re.compile(r"(?:[A-Za-z]:|\.{1,2}|~)?(?:[\\/][^\s\\/'\"():,;]+)+[\\/]([^\s\\/'\"():,;]+)")


def no_paths(message: str) -> str:
    """A message for the page with every filesystem path cut to its last part (the page never learns
    paths)."""
    return _PATH.sub(lambda m: m.group(1), message)


def host_name(host_header: str) -> str:
    """The name part of a Host header (`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:80` -> `[::1]`)."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def host_allowed(host_header: str | None, allowed_hosts: tuple[str, ...] | None) -> bool:
    """Whether a request's Host header names this server: a loopback name, or one of `allowed_hosts`
    (None: any, for a deliberately exposed server)."""
    if allowed_hosts is None:
        return True
    if not host_header:
        return False
    return host_name(host_header.lower()) in LOOPBACK_NAMES + tuple(h.lower() for h in allowed_hosts)


def origin_allowed(origin: str | None, host_header: str | None, allowed_origins: tuple[str, ...]) -> bool:
    """A WebSocket's Origin: none (not a browser), the page's own (http://<Host>), or one allowed
    explicitly."""
    if origin is None:
        return True
    origin = origin.lower().rstrip("/")
    if host_header and origin in (f"http://{host_header.lower()}", f"https://{host_header.lower()}"):
        return True
    return origin in {o.lower().rstrip("/") for o in allowed_origins} or "*" in allowed_origins


class BadRequest(UserError):
    """A request the page sent that cannot be served (the message is shown on the page)."""


def _num(msg: dict, key: str, default, lo: float, hi: float, kind=float):
    v = msg.get(key, default)
    if v is None:
        return None if default is None else kind(default)
    try:
        v = kind(v)
    except (TypeError, ValueError):
        raise BadRequest(f"{key} must be a number, got {v!r}") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise BadRequest(f"{key} = {v} is outside [{lo:g}, {hi:g}]")
    return v


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


class Codec:
    """Conversions between the page's bytes and model tensors, with the limits checked."""

    def __init__(self, engine, max_upload: int):
        self.engine, self.max_upload = engine, max_upload
        self.shape = tuple(engine.model.data_shape)

    def params(self, msg: dict) -> dict:
        label_hi = max(self.engine.model.label_dim - 1, 0)
        return {"seed": _num(msg, "seed", 0, 0, 2**31 - 1, int),
                "nfe": _num(msg, "nfe", 1, 1, self.engine.info()["max_nfe"], int),
                "gamma": _num(msg, "gamma", 0.0, 0.0, 1.0),
                "label": _num(msg, "label", None, 0, label_hi, int)}

    def out(self, x: torch.Tensor) -> dict:
        if len(self.shape) == 3:
            img = (((x[0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
                   .permute(1, 2, 0).contiguous())
            return {"pixels": base64.b64encode(img.numpy().tobytes()).decode(), "shape": list(img.shape)}
        return {"points": x[:, :2].float().numpy().round(4).tolist()}

    def pixels(self, b64: str) -> torch.Tensor:
        c, h, w = self.shape
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise BadRequest("pixels are not valid base64") from None
        if len(raw) != h * w * c:
            raise BadRequest(f"pixels: got {len(raw)} bytes, expected {h}x{w}x{c} = {h * w * c} for this "
                             "model")
        a = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(h, w, c).permute(2, 0, 1)
        return (a.float() / 127.5 - 1)[None]

    def points(self, pts) -> torch.Tensor:
        d = self.shape[0]
        try:
            x = torch.tensor(pts, dtype=torch.float32)
        except (TypeError, ValueError):
            raise BadRequest("points must be a list of [x, y] pairs") from None
        if x.ndim != 2 or x.shape[1] != d or not 1 <= len(x) <= MAX_POINTS:
            raise BadRequest(f"points: expected 1..{MAX_POINTS} pairs of {d} numbers, got shape "
                             f"{tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.abs().max() > 1e3:
            raise BadRequest("points must be finite and within +-1000")
        return x

    def upload(self, b64: str) -> torch.Tensor:
        """An uploaded image file as one model-sized image in [-1, 1] (square images are resized)."""
        from PIL import Image, UnidentifiedImageError

        if len(self.shape) != 3:
            raise BadRequest("uploads are for image models; draw points on the canvas instead")
        if not isinstance(b64, str):
            raise BadRequest("upload: no file data")
        if len(b64) * 3 // 4 > self.max_upload:
            raise BadRequest(f"upload of {_size(len(b64) * 3 // 4)} is over the {_size(self.max_upload)} "
                             "limit; send a smaller image")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("upload: the file data is not valid base64") from None
        try:
            # reads the header only: the size is known before decoding
            with Image.open(io.BytesIO(raw)) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise BadRequest(f"upload: a {w}x{h} image is too large to decode (at most 4096x4096 "
                                     "pixels); send a smaller image")
                c, mh, mw = self.shape
                if w != h:
                    raise BadRequest(f"upload: the image is {w}x{h}; this model works on square {mw}x{mh} "
                                     "images, crop it square")
                im = im.convert("L" if c == 1 else "RGB").resize((mw, mh), Image.Resampling.BOX)
                a = np.asarray(im, dtype=np.uint8).reshape(mh, mw, c)
        except Image.DecompressionBombError:
            raise BadRequest("upload: the image declares more pixels than PIL decodes safely (a "
                             "decompression bomb?); at most 4096x4096 pixels") from None
        except (UnidentifiedImageError, OSError):
            raise BadRequest("upload: the file is not an image PIL can read (use PNG, JPEG or "
                             "WebP)") from None
        return (torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1)[None]


class Session:
    """One page's WebSocket: a receiver filling request slots, a worker serving the newest of each."""

    def __init__(self, ws, engine, codec: Codec):
        self.ws, self.engine, self.codec = ws, engine, codec
        self.last_heard = time.monotonic()  # when the page last sent a message
        self.slots: dict[str, dict] = {}     # target -> newest pending request
        self.walk: dict | None = None        # walk settings while playing
        self.credits = WALK_CREDITS
        self.wake = asyncio.Event()

    async def send(self, data: dict) -> None:
        if "message" in data:
            data = {**data, "message": no_paths(str(data["message"]))}
        await self.ws.send_text(json.dumps(data))

    async def close(self, message: str) -> None:
        """Tell the page why, then close its socket (an idle page, or one whose slot went to another page)."""
        try:
            await self.send({"op": "error", "id": None, "fatal": True, "message": message})
            await self.ws.close(code=1001)
        except Exception:  # noqa: BLE001 - already closed by the page
            pass

    async def receive(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "ack":
            self.credits = min(self.credits + 1, WALK_CREDITS)
        elif op == "walk":
            if msg.get("play"):
                self.walk = {**msg, "params": self.codec.params(msg),
                             "phase": _num(msg, "phase", 0.0, -1e6, 1e6),
                             "step": _num(msg, "step", 0.05, -1.0, 1.0)}
                self.credits = WALK_CREDITS
            else:
                self.walk = None
        elif op == "generate":
            self.codec.params(msg)  # refuse bad values at once
            self.slots["gen"] = msg
        elif op in ("edit", "translate", "upload"):
            self.codec.params(msg)
            self.slots["edit"] = msg
        else:
            raise BadRequest(f"unknown request {op!r}")
        self.wake.set()

    def _serve(self, target: str, msg: dict) -> list[dict]:
        """Run one request in a worker thread: the frames to send."""
        eng, codec, p = self.engine, self.codec, self.codec.params(msg)
        sent_input = []
        if target == "gen":
            n = 1 if len(self.codec.shape) == 3 else GEN_POINTS
            x, ms = eng.generate(p["seed"], _num(msg, "phase", 0.0, -1e6, 1e6), p["nfe"], p["gamma"],
                                 p["label"], n=n)
        else:
            op = msg["op"]
            if op == "upload":
                x_in = codec.upload(msg.get("data"))
                sent_input.append({"op": "input", "id": msg.get("id"), **codec.out(x_in)})
                op = msg.get("mode", "edit")
            elif "points" in msg:
                x_in = codec.points(msg["points"])
            else:
                x_in = codec.pixels(msg.get("pixels"))
            if op == "translate":
                x, ms = eng.translate(x_in, p["nfe"], p["label"])
            else:
                strength = _num(msg, "strength", 0.5, 1e-3, 1.0)
                x, ms = eng.edit(x_in, strength, p["seed"], p["nfe"], p["gamma"], p["label"])
        return [*sent_input, {"op": "frame", "target": target, "id": msg.get("id"), "model_ms": round(ms, 3),
                              **codec.out(x)}]

    def _next(self) -> tuple[str, dict] | None:
        for target in ("edit", "gen"):
            if target in self.slots:
                return target, self.slots.pop(target)
        if self.walk is not None and self.credits > 0:
            w = self.walk
            msg = {**w, "op": "generate", "phase": w["phase"], "id": None}
            w["phase"] += w["step"]
            self.credits -= 1
            return "walk", msg
        return None

    async def work(self) -> None:
        try:
            await self._work()
        except Exception:  # the socket closed under a send: the session is over
            return

    async def _work(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while (job := self._next()) is not None:
                target, msg = job
                t0 = time.perf_counter()
                try:
                    frames = await asyncio.to_thread(self._serve, "gen" if target == "walk" else target, msg)
                except UserError as err:
                    if target == "walk":
                        self.walk = None
                    await self.send({"op": "error", "id": msg.get("id"), "message": str(err)})
                    continue
                except Exception as err:  # a bug must not take the server down: report it on the page
                    await self.send({"op": "error", "id": msg.get("id"),
                                     "message": f"internal error: {type(err).__name__}: {err}"})
                    continue
                for f in frames:
                    if f["op"] == "frame":
                        f["server_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
                        f["walk"] = target == "walk"
                        f["phase"] = msg.get("phase")
                    await self.send(f)


def index_html() -> str:
    return resources.files("ctmtool.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(engine, max_clients: int = 8, max_upload: int = 2_000_000,
               allowed_hosts: tuple[str, ...] | None = (), allowed_origins: tuple[str, ...] = (),
               idle_timeout: float = 300.0):
    """The Starlette app serving `engine`: GET / (the page), GET /info (JSON), WebSocket /ws.

    allowed_hosts: Host names accepted besides the loopback ones (None: any, for `serve --expose`);
    allowed_origins: page origins besides the server's own that may open the WebSocket (`--allow-origin`);
    idle_timeout: seconds without a message after which a page's socket is closed."""
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    page = index_html()
    codec = Codec(engine, max_upload)
    sessions: list[Session] = []  # per app, not global
    hello = {k: v for k, v in engine.info().items() if k != "path"}  # the page is not told where the file is

    def wrong_host(headers) -> bool:
        return not host_allowed(headers.get("host"), allowed_hosts)

    async def index(request):
        if wrong_host(request.headers):
            return PlainTextResponse("unknown host: this server answers to its own address only",
                                     status_code=421)
        return HTMLResponse(page)

    async def info(request):
        if wrong_host(request.headers):
            return PlainTextResponse("unknown host: this server answers to its own address only",
                                     status_code=421)
        return JSONResponse({**hello, "max_upload": max_upload, "max_clients": max_clients})

    async def refuse(ws: WebSocket, message: str, code: int) -> None:
        await ws.accept()
        await ws.send_text(json.dumps({"op": "error", "id": None, "fatal": True, "message": message}))
        await ws.close(code=code)

    async def socket(ws: WebSocket):
        if wrong_host(ws.headers) or not origin_allowed(ws.headers.get("origin"), ws.headers.get("host"),
                                                         allowed_origins):
            await ws.close(code=1008)  # policy violation: before accepting, so a foreign page learns nothing
            return
        if len(sessions) >= max_clients:
            idle = max(sessions, key=lambda s: time.monotonic() - s.last_heard)
            if time.monotonic() - idle.last_heard < EVICT_IDLE_S:
                await refuse(ws, f"server busy: {len(sessions)} pages are connected (limit {max_clients}); "
                                 "close one and reload", 1013)
                return
            sessions.remove(idle)
            await idle.close("this page was idle and another page needed its slot; reload to reconnect")
        await ws.accept()
        session = Session(ws, engine, codec)
        sessions.append(session)
        worker = asyncio.create_task(session.work())
        try:
            await session.send({"op": "hello", "info": {**hello, "max_upload": max_upload}})
            while True:
                try:
                    text = await asyncio.wait_for(ws.receive_text(), idle_timeout)
                except TimeoutError:
                    await session.close(f"closed after {idle_timeout:g} s without a request; reload to "
                                        "reconnect")
                    break
                session.last_heard = time.monotonic()
                try:
                    msg = json.loads(text)
                    if not isinstance(msg, dict):
                        raise BadRequest("a request must be a JSON object")
                    await session.receive(msg)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    await session.send({"op": "error", "id": None, "message": "request is not valid JSON"})
                except UserError as err:
                    await session.send({"op": "error", "id": msg.get("id") if isinstance(msg, dict) else None,
                                        "message": str(err)})
        except (WebSocketDisconnect, RuntimeError, KeyError):  # closed socket, or a binary / odd frame
            pass
        finally:
            if session in sessions:
                sessions.remove(session)
            worker.cancel()

    return Starlette(routes=[Route("/", index), Route("/info", info), WebSocketRoute("/ws", socket)])
