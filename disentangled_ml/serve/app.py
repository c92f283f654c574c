"""The HTTP side of ``dml serve``: a Starlette app over an :class:`~disentangled_ml.serve.explorer.Explorer`.

Routes (JSON answers; an error is ``{"error": message}`` with its status):

==============================  =============================================================================
``GET /``                       the page (``static/index.html``; its script and style under ``/static/``)
``GET /api/info``               the catalogue's summary and the server's limits
``GET /api/find?q=TEXT``        tracks whose id or path contains TEXT (``limit``, at most 50)
``GET /api/track?index=I``      one track by its catalogue index (a map point)
``GET /api/neighbours``         ``track=ID`` or ``upload=ID``, ``weights=genre=0,mood=1,...`` (as ``dml
                                similar --weights``), ``k`` (1..100): the nearest tracks, each with its
                                distance, labels, audio URL and matched segment
``GET /api/map?view=V``         the 2-D map of a condition's view (x, y, colours), in catalogue order
``POST /api/upload?name=F``     the body is an audio file (at most ``--max-upload-mb``), embedded with the
                                export as a query; answers its ``upload_id``
``GET /audio/PATH``             a catalogue track's file (``audio/*``, byte ranges for seeking), PATH relative
                                to the audio root; anything else is 404 (:mod:`.audio_files`)
==============================  =============================================================================

Safety: when the server listens on a loopback address, requests whose ``Host`` header is not a
loopback name are refused (400), so that a web page elsewhere cannot reach it by DNS rebinding;
every answer carries a content security policy that allows only this origin's scripts.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import sys
import tempfile
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from disentangled_ml.catalogue_search import SearchError
from disentangled_ml.serve.explorer import K_DEFAULT, Explorer, RequestError


#: The page's files (package data).
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
#: Names the page may be reached by when the server listens on loopback.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Sent with every answer: scripts, styles and media from this origin only (uploads play from blob: URLs).
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; media-src 'self' blob:; img-src 'self' data:; "
                                 b"object-src 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a ``--host`` value) is a loopback name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name part of a ``Host`` header: ``127.0.0.1:8000`` -> ``127.0.0.1``, ``[::1]:8000`` -> ``::1``."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """ASGI middleware: the security headers on every answer, and (``loopback_only``) the ``Host`` check."""

    def __init__(self, app: ASGIApp, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in LOOPBACK_NAMES:
                response = JSONResponse({"error": f"Host {host!r} is not a loopback name; this server answers "
                                                  "only http://127.0.0.1 or http://localhost."}, 400)
                await response(scope, receive, send)
                return

        async def send_with_headers(message: Dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error(e: SearchError) -> JSONResponse:
    return JSONResponse({"error": str(e)}, getattr(e, "status", 400))


def create_app(explorer: Explorer, loopback_only: bool = True) -> ASGIApp:
    """The ASGI app serving ``explorer`` (module docstring), wrapped in :class:`Guard`."""
    upload_dir = tempfile.mkdtemp(prefix="dml_serve_uploads_")

    def api(handler: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
        """A JSON endpoint: ``handler(request)`` runs in a worker thread (searches and maps take CPU time)."""
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await run_in_threadpool(handler, request))
            except SearchError as e:
                return _error(e)
        return endpoint

    def neighbours(request: Request) -> Dict[str, Any]:
        q = request.query_params
        return explorer.neighbours(track=q.get("track"), upload=q.get("upload"), weights=q.get("weights"),
                                   k=q.get("k", K_DEFAULT))

    async def upload(request: Request) -> Response:
        try:
            return JSONResponse(await _receive_upload(request, explorer, upload_dir))
        except SearchError as e:
            return _error(e)

    async def audio(request: Request) -> Response:
        path = explorer.audio.resolve(request.path_params["path"])
        if path is None:
            return JSONResponse({"error": "not a track file of this catalogue"}, 404)
        return FileResponse(path, media_type=explorer.audio.media_type(path))

    async def page(request: Request) -> Response:
        return FileResponse(os.path.join(STATIC_DIR, "index.html"), media_type="text/html")

    routes: List[Any] = [
        Route("/", page),
        Route("/api/info", api(lambda r: explorer.info())),
        Route("/api/find", api(lambda r: {"tracks": explorer.find(r.query_params.get("q", ""),
                                                                  _int(r.query_params.get("limit"), 20))})),
        Route("/api/track", api(lambda r: explorer.track_at(r.query_params.get("index", "")))),
        Route("/api/neighbours", api(neighbours)),
        Route("/api/map", api(lambda r: explorer.map(r.query_params.get("view", "")))),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/audio/{path:path}", audio),
        Mount("/static", StaticFiles(directory=STATIC_DIR)),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        shutil.rmtree(upload_dir, ignore_errors=True)  # empty unless an upload was cut off by the shutdown

    return Guard(Starlette(routes=routes, lifespan=lifespan), loopback_only)


def _int(text: Optional[str], default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


async def _receive_upload(request: Request, explorer: Explorer, upload_dir: str) -> Dict[str, Any]:
    """Stream the body to a temporary file, stopping at the size limit, embed it, delete it."""
    from disentangled_ml.audio_io import SUPPORTED_EXTENSIONS

    name = os.path.basename(request.query_params.get("name", "").replace("\\", "/")).strip() or "upload"
    ext = os.path.splitext(name)[1].lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise RequestError(f"{name}: unsupported audio format {ext or '(no extension)'!r}; drop a "
                           f"{', '.join(SUPPORTED_EXTENSIONS)} file.")
    limit = explorer.max_upload_bytes
    over = (f"this server's upload limit of {limit / 2 ** 20:g} MB; cut it shorter, or restart the server with a "
            "larger --max-upload-mb.")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"{name} is {int(declared) / 2 ** 20:.1f} MB, over {over}", 413)
    fd, path = tempfile.mkstemp(suffix=ext, dir=upload_dir)
    try:
        size = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # a body longer than it declared, or sent without a length
                    raise RequestError(f"{name} is larger than {over}", 413)
                f.write(chunk)
        if size == 0:
            raise RequestError(f"{name} is empty; drop an audio file.")
        return await run_in_threadpool(explorer.embed_upload, path, name)
    finally:
        os.remove(path)


def serve(explorer: Explorer, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted (uvicorn, one process). Warns on stderr when ``host`` is not loopback."""
    import uvicorn

    loopback = is_loopback(host)
    if not loopback:
        print(f"WARNING: dml serve listens on {host}, beyond this machine's loopback: anyone who can reach it on "
              f"port {port} can search the catalogue, play its audio files and upload files for the export to "
              "embed, with no password. Use the default --host 127.0.0.1 unless that is what you want.",
              file=sys.stderr, flush=True)
    shown = f"[{host}]" if ":" in host else host
    info = explorer.info()
    print(f"dml serve: {info['tracks']} tracks ({', '.join(info['conditions'])}; {info['search']} search) at "
          f"http://{shown}:{port}/ (Ctrl+C stops it)", flush=True)
    uvicorn.run(create_app(explorer, loopback_only=loopback), host=host, port=port, log_level="warning",
                access_log=False)
