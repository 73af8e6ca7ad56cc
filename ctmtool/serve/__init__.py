"""`ctmtool serve`: a local web page for real-time generation, a latent walk, SDEdit stroke editing and GCTM
translation, with the latency shown; `engine` calls the library, `app` is the ASGI app (Starlette)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


def run_server(app, host: str = "127.0.0.1", port: int = 8000, max_message: int = 8_000_000,
               log_level: str = "warning", on_start: Callable[[], None] | None = None) -> None:
    """Serve `app` with uvicorn until interrupted; WebSocket messages above `max_message` bytes are refused.
    `on_start` runs once the socket listens (inside the event loop, where uvicorn handles SIGINT/SIGTERM)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           ws_max_size=max_message, ws="websockets-sansio"))
    if on_start is not None:
        startup = server.startup

        async def started(sockets=None) -> None:
            await startup(sockets=sockets)
            if server.started:
                on_start()

        server.startup = started
    server.run()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving `app` in a thread (tests, benchmarks): `url`, and `stop()`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None, max_message: int = 8_000_000,
                 timeout: float = 30.0):
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}/"
        cfg = uvicorn.Config(app, host=host, port=self.port, log_level="warning", ws_max_size=max_message,
                             ws="websockets-sansio", lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the server did not start on {host}:{self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
