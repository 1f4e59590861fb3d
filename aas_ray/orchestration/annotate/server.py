"""``aas-ray annotate``: the pair annotation page (FastAPI + uvicorn) over one run folder.

Requests name pairs and images by their number in the run, never by a path: an image is
read from the catalogue root only, cropped to its ``bbox`` on request and scaled down for
the screen (multi-megapixel photos are not sent whole). Bound to loopback by default; on
any other address every request must carry the access token printed at start.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from aas_ray.checks import InputError
from aas_ray.experiment.annotation import AnnotationSession

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class AnswerIn(BaseModel):
    i: int
    answer: str
    client: str
    correct: bool = False


class ClientIn(BaseModel):
    client: str
    after: int | None = None


class CorrectIn(BaseModel):
    u: int
    v: int
    answer: str
    client: str


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
               on_complete=None) -> FastAPI:
    """The page and its API. ``token`` (when set) must come with every request, as
    ``?token=`` or the cookie the first page load sets. ``on_complete`` is called once the
    cycle's last pair is answered (``aas-ray run --serve`` resumes training from it)."""
    app = FastAPI(title="aas-ray annotation", docs_url=None, redoc_url=None)

    @lru_cache(maxsize=512)
    def image_bytes(index: int, crop: bool, max_side: int) -> bytes:
        path, bbox = session.image_path(index)
        return render(path, bbox, crop, max_side)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token is not None:
            given = request.query_params.get("token") or request.cookies.get("aas_token")
            if not given or not secrets.compare_digest(given, token):
                return JSONResponse({"error": "access token required"}, status_code=401)
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie("aas_token", token, httponly=True, samesite="strict")
        return response

    def done_check(out: dict) -> dict:
        if out.get("complete") and on_complete is not None:
            threading.Thread(target=on_complete, daemon=True).start()
        out["serve_mode"] = serve_mode
        return out

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
        except InputError as err:
            raise HTTPException(400, str(err)) from None

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
        try:
            return done_check(session.correct(body.u, body.v, body.answer, body.client))
        except InputError as err:
            raise HTTPException(400, str(err)) from None

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

    return app


def serve(session: AnnotationSession, host: str = "127.0.0.1", port: int = 8700, serve_mode: bool = False,
          on_complete=None, token: str | None = None):
    """Run the page until stopped; returns the uvicorn server (``.should_exit = True`` stops it)."""
    import uvicorn

    if host not in LOOPBACK and token is None:
        token = secrets.token_urlsafe(24)
    app = create_app(session, token, serve_mode, on_complete)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    url = f"http://{host}:{port}/" + (f"?token={token}" if token else "")
    log.info("annotation page for run %s: %s", session.dir, url)
    return server, url
