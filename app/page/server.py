"""The inspection page's HTTP side: a Starlette application (ASGI, served by uvicorn)
with the page and a small JSON API over :mod:`app.page.session`.

======================================  ===================================================
``GET /``                               the page (``static/index.html``)
``GET /api/runs``                       the finished runs under the root, newest first
``GET /api/runs/{run}``                 heads and classes, layers, methods, defaults, the
                                        report's quality scores
``GET /api/runs/{run}/samples``         a page of a split's images with true and predicted
                                        class (``split``, ``head``, ``only`` all/wrong/right,
                                        ``true``, ``predicted``, ``order`` index/confidence,
                                        ``offset``, ``limit``)
``GET /api/runs/{run}/samples/{split}/{index}.png``  one image of the split
``POST /api/runs/{run}/uploads``        an image file as the request body -> ``{"image": token}``
``GET /api/runs/{run}/uploads/{token}.png``  the uploaded image as the model sees it
``POST /api/runs/{run}/predict``        ``{"image": {...}}`` -> the top predictions per head
``POST /api/runs/{run}/explain``        ``{"image": {...}, "method", "head", "target", ...}``
                                        -> ``{"job": id}``
``GET /api/jobs/{id}``                  the job's state, progress and, when done, its maps
``GET /api/jobs/{id}/{map}.png|.npy``   one map as a picture or as the float32 array
======================================  ===================================================

An image is ``{"sample": {"split": "test", "index": 12}}`` or ``{"upload": token}``.
Errors answer with ``{"error": message}`` and a status (400 for a bad request, 404 for
something unknown, 413 for an upload too large, 500 with the message but never a
traceback for anything else).
"""

from __future__ import annotations

import contextlib
import io
import json
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from app.page.jobs import Jobs, Request, explain_work, image_png
from app.page.session import MAX_UPLOAD_BYTES, SPLITS, NotFound, Runs, Uploads
from visualize.methods import ENGINES, FILLS, SALIENCY_OF, SPREADS

PAGE = Path(__file__).resolve().parent / "static" / "index.html"
# Bytes of a JSON request body at most (an explanation request is a few hundred).
MAX_JSON_BYTES = 64 << 10


class BadRequest(ValueError):
    """A request whose form is wrong (status 400), with ``status`` for the others."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def make_app(root: Path, *, input_range: str = "auto") -> Starlette:
    """The page's application for the runs under ``root`` (``saved_models/``)."""
    state = {"runs": Runs(root, input_range=input_range), "uploads": Uploads(), "jobs": Jobs()}

    def page(request: HttpRequest) -> Response:
        return FileResponse(
            PAGE, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-store"}
        )

    def list_runs(request: HttpRequest) -> Response:
        return JSONResponse({"root": str(root), "runs": state["runs"].names()})

    def describe_run(request: HttpRequest) -> Response:
        return JSONResponse(_session(state, request).describe())

    def samples(request: HttpRequest) -> Response:
        session = _session(state, request)
        query = request.query_params
        head = query.get("head") or next(iter(session.classes))
        found = session.samples(
            query.get("split", "test"),
            head,
            only=query.get("only", "all"),
            true=_optional_int(query, "true"),
            predicted=_optional_int(query, "predicted"),
            order=query.get("order", "index"),
            offset=_optional_int(query, "offset") or 0,
            limit=_optional_int(query, "limit") or 48,
        )
        return JSONResponse(found)

    def sample_png(request: HttpRequest) -> Response:
        session = _session(state, request)
        split = request.path_params["split"]
        image = session.sample_image(split, request.path_params["index"])
        return Response(image_png(image), media_type="image/png")

    async def upload(request: HttpRequest) -> Response:
        session = _session(state, request)
        content = await _body(request, MAX_UPLOAD_BYTES, "an image")
        token = state["uploads"].add(content, session.image_shape)
        return JSONResponse({"image": token}, status_code=201)

    def upload_png(request: HttpRequest) -> Response:
        _session(state, request)
        return Response(image_png(state["uploads"].get(request.path_params["token"])), media_type="image/png")

    async def predict(request: HttpRequest) -> Response:
        session = _session(state, request)
        body = await _json(request)
        image, truth = _image(state, session, body.get("image"))
        return JSONResponse({"heads": session.predict(image), "truth": truth})

    async def explain(request: HttpRequest) -> Response:
        session = _session(state, request)
        body = await _json(request)
        image = None if body.get("method") == "filters" else _image(state, session, body.get("image"))[0]
        wanted = _explain_request(body, session)
        work = explain_work(session, image, wanted)  # checks the request before it is queued
        job = state["jobs"].submit(f"{wanted.method} of head {wanted.head}", work)
        return JSONResponse({"job": job.id}, status_code=202)

    def job_status(request: HttpRequest) -> Response:
        return JSONResponse(state["jobs"].get(request.path_params["job"]).status())

    def job_file(request: HttpRequest) -> Response:
        job = state["jobs"].get(request.path_params["job"])
        name, kind = request.path_params["name"], request.path_params["kind"]
        if kind == "png" and name in job.pngs:
            return Response(job.pngs[name], media_type="image/png")
        if kind == "npy" and name in job.maps:
            buffer = io.BytesIO()
            np.save(buffer, job.maps[name].astype(np.float32))
            disposition = f'attachment; filename="{name}.npy"'
            return Response(buffer.getvalue(), media_type="application/octet-stream",
                            headers={"Content-Disposition": disposition})  # fmt: skip
        raise NotFound(f"job {job.id} has no {name}.{kind} ({job.state}).")

    routes = [
        Route("/", page),
        Route("/api/runs", list_runs),
        Route("/api/runs/{run}", describe_run),
        Route("/api/runs/{run}/samples", samples),
        Route("/api/runs/{run}/samples/{split}/{index:int}.png", sample_png),
        Route("/api/runs/{run}/uploads", upload, methods=["POST"]),
        Route("/api/runs/{run}/uploads/{token}.png", upload_png),
        Route("/api/runs/{run}/predict", predict, methods=["POST"]),
        Route("/api/runs/{run}/explain", explain, methods=["POST"]),
        Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/{name}.{kind:str}", job_file),
    ]
    handlers = {
        BadRequest: _error_answer,
        ValueError: _error_answer,
        LookupError: _error_answer,
        HTTPException: _http_answer,
        Exception: _internal_answer,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state["jobs"].close()

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.page = state
    return app


def _session(state, request: HttpRequest):
    return state["runs"].open(request.path_params["run"])


def _optional_int(query, name: str) -> int | None:
    text = query.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {text!r}.") from None


async def _body(request: HttpRequest, limit: int, what: str) -> bytes:
    """The request body, refused beyond ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"{what} of {int(declared):,} bytes; at most {limit:,} are accepted.", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(
                f"{what} of more than {limit:,} bytes; at most {limit:,} are accepted.", status=413
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def _json(request: HttpRequest) -> dict[str, Any]:
    content = await _body(request, MAX_JSON_BYTES, "a request")
    try:
        body = json.loads(content or b"{}")
    except ValueError:
        raise BadRequest('the request body must be JSON, e.g. {"image": {"upload": TOKEN}}.') from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object.")
    return body


def _image(state, session, reference) -> tuple[np.ndarray, dict[str, str] | None]:
    """The image a request names, and its true classes when it is a sample."""
    if not isinstance(reference, dict) or len(reference) != 1:
        raise BadRequest('name one image: {"sample": {"split": "test", "index": 0}} or {"upload": TOKEN}.')
    if "upload" in reference:
        return state["uploads"].get(str(reference["upload"])), None
    sample = reference.get("sample")
    if (
        not isinstance(sample, dict)
        or sample.get("split") not in SPLITS
        or not isinstance(sample.get("index"), int)
    ):
        raise BadRequest(f'a sample is {{"split": one of {", ".join(SPLITS)}, "index": N}}, got {sample!r}.')
    split, index = sample["split"], sample["index"]
    return session.sample_image(split, index), session.sample_truth(split, index)


def _explain_request(body: dict[str, Any], session) -> Request:
    """An explanation request from the page's JSON, each field checked by type and range."""
    head = body.get("head") or next(iter(session.classes))
    fields: dict[str, Any] = {"method": body.get("method"), "head": head}
    expected = {
        "target": int,
        "layer": str,
        "patch": int,
        "stride": int,
        "engine": str,
        "spread": str,
        "saliency_of": str,
        "smoothgrad": int,
        "filters": int,
    }
    for name, kind in expected.items():
        value = body.get(name)
        if value is None or value == "":
            continue
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(f"{name} must be a whole number, got {value!r}.")
        if kind is str and not isinstance(value, str):
            raise BadRequest(f"{name} must be text, got {value!r}.")
        fields[name] = value
    if not isinstance(fields["method"], str):
        raise BadRequest('name the method, e.g. {"method": "gradcam"}.')
    fields.setdefault("target", 0)
    fill = body.get("fill", "mean")
    if fill not in FILLS:
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 <= fill <= 255:
            raise BadRequest(f"fill must be one of {', '.join(FILLS)} or a pixel value 0-255, got {fill!r}.")
    fields["fill"] = fill
    if fields.get("engine", "auto") not in ENGINES:
        raise BadRequest(f"engine must be one of {', '.join(ENGINES)}, got {fields['engine']!r}.")
    if fields.get("spread", "window") not in SPREADS:
        raise BadRequest(f"spread must be one of {', '.join(SPREADS)}, got {fields['spread']!r}.")
    if fields.get("saliency_of", "loss") not in SALIENCY_OF:
        raise BadRequest(
            f"saliency_of must be one of {', '.join(SALIENCY_OF)}, got {fields['saliency_of']!r}."
        )
    if fields.get("smoothgrad", 0) < 0 or not 1 <= fields.get("filters", 1) <= 1024:
        raise BadRequest("smoothgrad must be 0 or more and filters 1..1024.")
    return Request(**fields)


def _error_answer(request: HttpRequest, error: Exception) -> Response:
    status = getattr(error, "status", None) or (404 if isinstance(error, LookupError) else 400)
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return JSONResponse({"error": message}, status_code=status)


def _http_answer(request: HttpRequest, error: HTTPException) -> Response:
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


def _internal_answer(request: HttpRequest, error: Exception) -> Response:
    traceback.print_exc()  # for whoever runs the server; the page gets the message only
    return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"}, status_code=500)
