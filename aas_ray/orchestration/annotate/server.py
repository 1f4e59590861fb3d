"""``aas-ray annotate``: the pair annotation page (FastAPI + uvicorn) over one run folder.

Requests name pairs and images by their number in the run, never by a path: an image is
read from the catalogue root only, cropped to its ``bbox`` on request and scaled down for
the screen (multi-megapixel photos are not sent whole). Bound to loopback by default; on
any other address every request must carry the access token printed at start.

Everything the page shows is untrusted data (a journal's ``source``, a pool, the run
folder's name): the scripts build DOM nodes and set ``textContent``, and every response
carries a Content-Security-Policy that runs no inline script. Only Host headers naming
the address the server was started for are answered (a page elsewhere that rebinds its
DNS name to this address gets 400), and a POST must come from the page itself (its
Origin, or ``Sec-Fetch-Site: same-origin``) or carry the token: another site cannot
post answers through the annotator's browser.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import re
import secrets
import socket
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, field_validator

from aas_ray.checks import InputError
from aas_ray.orchestration.annotate.session import AnnotationSession

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARD = ("0.0.0.0", "::", "")
CLIENT = re.compile(r"[A-Za-z0-9_-]{1,32}")
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token may be in the address
}


class ClientField(BaseModel):
    client: str

    @field_validator("client")
    @classmethod
    def plain_identifier(cls, value: str) -> str:
        # The page names itself with a random identifier; it is stored with each answer.
        if not CLIENT.fullmatch(value):
            raise ValueError("must be 1 to 32 letters, digits, '-' or '_'")
        return value


class AnswerIn(ClientField):
    i: int
    answer: str
    correct: bool = False


class ClientIn(ClientField):
    after: int | None = None


class CorrectIn(ClientField):
    u: int
    v: int
    answer: str


class HostCheck:
    """The Host headers a server started for ``host``:``port`` answers: the loopback names,
    ``host`` itself, and, bound to every address (0.0.0.0), any IP address or this machine's
    name. A DNS name of someone else's (DNS rebinding) is never one of them."""

    def __init__(self, host: str, port: int):
        self.port = port
        self.names = {*LOOPBACK, host.strip("[]").lower()}
        self.any_address = host in WILDCARD
        if self.any_address:
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def __call__(self, header: str) -> bool:
        m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d+))?", header)
        if m is None:
            return False
        name, port = m.group(1).strip("[]").lower(), int(m.group(2) or 80)
        if self.port and port != self.port:
            return False
        return name in self.names or (self.any_address and _is_address(name))


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def cross_origin(request: Request) -> bool | None:
    """True when the browser says the request comes from another origin, False when it says
    this page, None when it says nothing (not a browser)."""
    origin, site = request.headers.get("origin"), request.headers.get("sec-fetch-site")
    if origin is None and site is None:
        return None
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    return (origin is not None and origin != own) or (site is not None and site != "same-origin")


def one_line(err: RequestValidationError) -> str:
    """A request body's faults as one line naming each field."""
    parts = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"] if p != "body") or "body"
        parts.append(f"{field}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def render(path: Path, bbox: str, crop: bool, max_side: int) -> bytes:
    """A JPEG of the image for the page: cropped to ``bbox`` when asked, at most ``max_side``."""
    from PIL import Image

    from aas_ray.data.images import _parse_bbox

    with Image.open(path) as im:
        full = im.size
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced size directly
        im = im.convert("RGB")
        box = _parse_bbox(bbox) if crop and bbox and bbox.lower() not in ("nan", "none") else None
        if box is not None:
            sx, sy = im.size[0] / full[0], im.size[1] / full[1]
            x, y, w, h = box
            im = im.crop((int(x * sx), int(y * sy), int((x + w) * sx), int((y + h) * sy)))
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=88)
        return buf.getvalue()


def create_app(session: AnnotationSession, token: str | None = None, serve_mode: bool = False,
               on_complete=None, host: str = "127.0.0.1", port: int = 8700) -> FastAPI:
    """The page and its API for a server started on ``host``:``port``. ``token`` (when set)
    must come with every request, as ``?token=`` or the cookie the first page load sets.
    ``on_complete`` is called once the cycle's last pair is answered (``aas-ray run --serve``
    resumes training from it)."""
    app = FastAPI(title="aas-ray annotation", docs_url=None, redoc_url=None)
    _guard(app, token, HostCheck(host, port))
    _pages(app)

    def done_check(out: dict) -> dict:
        if out.get("complete") and on_complete is not None:
            threading.Thread(target=on_complete, daemon=True).start()
        out["serve_mode"] = serve_mode
        return out

    _pair_api(app, session, done_check)
    _image_api(app, session)
    return app


def _guard(app: FastAPI, token: str | None, host_ok: HostCheck) -> None:
    """What every request passes first: the Host, the token, the Origin of a change, the
    security headers; and errors as one-line JSON."""

    def refusal(request: Request) -> JSONResponse | None:
        """Why ``request`` is not answered (before any route sees it), or None."""
        if not host_ok(request.headers.get("host", "")):
            return JSONResponse({"error": f"Host {request.headers.get('host', '')!r} is not an address this "
                                          "page was started for"}, status_code=400)
        given = request.query_params.get("token") or request.cookies.get("aas_token")
        token_ok = token is not None and given is not None and secrets.compare_digest(given, token)
        if token is not None and not token_ok:
            return JSONResponse({"error": "access token required"}, status_code=401)
        if request.method not in ("GET", "HEAD"):
            cross = cross_origin(request)
            if cross or (cross is None and not token_ok):
                return JSONResponse({"error": "a change must come from this page (its Origin) or carry the "
                                              "access token"}, status_code=403)
        return None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        response = refusal(request) or await call_next(request)
        if token is not None and request.query_params.get("token") and response.status_code < 400:
            response.set_cookie("aas_token", token, httponly=True, samesite="strict")
        response.headers.update(HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError):
        return JSONResponse({"error": one_line(err)}, status_code=422)

    @app.exception_handler(InputError)
    async def bad_input(request: Request, err: InputError):
        # an unknown answer, a run that waits for none, a damaged run-folder file: named in one line
        return JSONResponse({"error": str(err)}, status_code=400)


def _pages(app: FastAPI) -> None:
    """The two pages and their static files."""

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico")
    def favicon():
        return Response(status_code=204)

    @app.get("/review")
    def review_page():
        return FileResponse(STATIC / "review.html")

    @app.get("/static/{name}")
    def static(name: str):
        allowed = {p.name: p for p in STATIC.iterdir()}
        if name not in allowed:
            raise HTTPException(404)
        return FileResponse(allowed[name])


def _pair_api(app: FastAPI, session: AnnotationSession, done_check) -> None:
    """The pairs of the pending cycle: status, next pair, answer, undo, review and correction;
    ``done_check`` marks a reply and starts the follow-up once the cycle is complete."""

    @app.get("/api/status")
    def status():
        now = session.status()
        if not now["waiting"] or now["complete"]:
            session.reload()  # training may have moved on to the next cycle
        return done_check(session.status())

    @app.post("/api/next")
    def next_pair(body: ClientIn):
        p = session.next_pair(body.client, body.after)
        return {"pair": p, **done_check(session.status())}

    @app.get("/api/pair/{i}")
    def pair(i: int):
        try:
            return session.pair(i)
        except KeyError:
            raise HTTPException(404, f"no pair {i}") from None

    @app.post("/api/answer")
    def answer(body: AnswerIn):
        try:
            return done_check(session.answer(body.i, body.answer, body.client, body.correct))
        except KeyError:
            raise HTTPException(404, f"no pair {body.i}") from None

    @app.post("/api/undo")
    def undo(body: ClientIn):
        return session.undo(body.client)

    @app.get("/api/context/{image}")
    def context(image: int):
        return {"image": image, "others": session.context(image)}

    @app.get("/api/answers")
    def answers(cycle: int | None = None, answer: str | None = None, pool: str | None = None):
        return {"answers": session.review(cycle, answer, pool), **session.status()}

    @app.post("/api/correct")
    def correct(body: CorrectIn):
        return done_check(session.correct(body.u, body.v, body.answer, body.client))


def _image_api(app: FastAPI, session: AnnotationSession) -> None:
    """The photos of the run's training images, rendered once per size and kept."""

    @lru_cache(maxsize=512)
    def image_bytes(index: int, crop: bool, max_side: int) -> bytes:
        path, bbox = session.image_path(index)
        return render(path, bbox, crop, max_side)

    @app.get("/api/image/{index}")
    def image(index: int, crop: int = 1, max_side: int = 1400):
        try:
            data = image_bytes(index, bool(crop), min(max(max_side, 64), 4096))
        except KeyError:
            raise HTTPException(404, f"no image {index}") from None
        except PermissionError as err:
            raise HTTPException(403, str(err)) from None
        except OSError:
            raise HTTPException(404, f"image {index} cannot be read") from None
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def serve(session: AnnotationSession, host: str = "127.0.0.1", port: int = 8700, serve_mode: bool = False,
          on_complete=None, token: str | None = None):
    """Run the page until stopped; returns the uvicorn server (``.should_exit = True`` stops it)."""
    import uvicorn

    if host not in LOOPBACK and token is None:
        token = secrets.token_urlsafe(24)
    app = create_app(session, token, serve_mode, on_complete, host, port)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    log.info("annotation page for run %s: %s", session.dir, url)
    return server, url
