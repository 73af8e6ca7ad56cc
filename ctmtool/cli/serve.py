"""`ctmtool serve`: a local web page for real-time generation, the latent walk, SDEdit editing and
translation."""

from __future__ import annotations

import warnings
from typing import Literal

import typer

from ctmtool.cli.common import Command, EmaOpt, Reporter, RequiredCkptOpt, handle_errors
from ctmtool.errors import UserError


@handle_errors
def serve_cmd(
    ckpt: RequiredCkptOpt = ...,
    port: int = typer.Option(8000, "--port", help="TCP port."),
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to bind; the default "
                                "serves this machine only (0.0.0.0: every interface)."),
    backend: Literal["auto", "onnxruntime", "torch"] = typer.Option("auto", "--backend",
                                                                    help="auto (ONNX Runtime when it exports "
                                                                         "and verifies, else PyTorch), "
                                                                         "onnxruntime or torch."),
    threads: int = typer.Option(1, "--threads",
                                help="CPU threads for the network (PyTorch and ONNX Runtime)."),
    ema: EmaOpt = "ema",
    max_clients: int = typer.Option(8, "--max-clients",
                                    help="Pages connected at once; more are told the server is busy."),
    max_upload_mb: float = typer.Option(2.0, "--max-upload-mb", help="Largest image upload accepted, in MB."),
    expose: bool = typer.Option(False, "--expose",
                                help="Allow a --host other than this machine's loopback address: "
                                "anyone who can reach it can use the model (a warning is printed)."),
    allow_origin: list[str] | None = typer.Option(None, "--allow-origin",
                                                  help="A page origin besides the server's "
                                                  "own that may open the WebSocket, e.g. http://myhost:3000 "
                                                  "(repeatable)."),
    idle_timeout: float = typer.Option(300.0, "--idle-timeout",
                                       help="Seconds without a request after which a page "
                                       "is disconnected (it frees its slot)."),
) -> None:
    """Serve one page at http://HOST:PORT/: a seed and a latent walk streamed over a WebSocket, NFE / gamma /
    class controls, stroke and upload editing (SDEdit), GCTM translation, and the model and end-to-end
    latency."""
    rep = Reporter()
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise UserError(f"serve needs starlette and uvicorn ({err.name} is missing); install them with "
                        "`pip install 'ctmtool[serve]'`") from None
    import torch

    from ctmtool.core.models import load_model
    from ctmtool.jobs.run_dirs import checkpoint_file
    from ctmtool.serve import run_server
    from ctmtool.serve.app import create_app
    from ctmtool.serve.engine import Engine

    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    if threads < 1 or max_clients < 1 or not 0 < max_upload_mb <= 1000 or not idle_timeout > 0:
        raise UserError("--threads and --max-clients must be at least 1, --max-upload-mb in (0, 1000] and "
                        "--idle-timeout positive")
    loopback = is_loopback(host)
    if not loopback and not expose:
        raise UserError(f"--host {host!r} serves the model to every machine that can reach this one; pass "
                        "--expose if you mean it, or use the default --host 127.0.0.1")
    if not loopback:
        rep.warn(f"--expose: the model is served on {host or 'every interface'}:{port} to anyone who can "
                 "reach it; there is no authentication")
    import socket

    try:  # uvicorn reports a busy port only in its log: check first
        with socket.socket() as sock:
            sock.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port or "
                        "--host") from None
    torch.set_num_threads(threads)
    model = load_model(checkpoint_file(ckpt), which=ema)
    engine = Engine(model, backend=backend, threads=threads, log=rep.log)
    max_upload = int(max_upload_mb * 1e6)
    app = create_app(engine, max_clients=max_clients, max_upload=max_upload,
                     allowed_hosts=() if loopback else None, allowed_origins=tuple(allow_origin or ()),
                     idle_timeout=idle_timeout)
    shown = host if loopback else (host or "0.0.0.0")
    started = (f"serving {model.kind} model {model.path} ({engine.backend}) at http://{shown}:{port}/  "
               "(Ctrl-C stops)")
    # a signal can stop the event loop between a coroutine's creation and its first await: nothing is lost,
    # and the interpreter's "never awaited" warning would only follow the one `error:` line
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    try:
        run_server(app, host=host, port=port, max_message=2 * max_upload + 65536,
                   on_start=lambda: rep.log(started))
    except OSError as err:
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another "
                        "--port") from None


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only ('' and 0.0.0.0 bind every interface)."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def register(app: typer.Typer) -> None:
    app.command("serve", cls=Command,
                short_help="A local web page: live generation, stroke editing and translation, with "
                           "latency.")(serve_cmd)
