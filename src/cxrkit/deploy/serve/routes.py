"""Endpoints and error handlers of the service (state lives on ``app.state``; see :func:`app.create_app`)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from fastapi import FastAPI, File, HTTPException, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrkit import RESEARCH_NOTICE
from cxrkit.data.errors import ImageError
from cxrkit.deploy.serve.web_page import PAGE_CSP, WEB_DIR
from cxrkit.deploy.serve.auth import API_KEY_HEADER, key_matches
from cxrkit.deploy.serve.batching import QueueFull
from cxrkit.deploy.serve.engine import RequestError, UnsupportedImage
from cxrkit.deploy.serve.errors import ServeError
from cxrkit.deploy.serve.schemas import ErrorResponse, Health, ModelInfo, PredictResponse, Ready

log = logging.getLogger("cxrkit.serve")
_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the server's API key")
_ERR = {"model": ErrorResponse}
AUTH_ERRORS = {401: _ERR, 403: _ERR}
PREDICT_ERRORS = {400: _ERR, 413: _ERR, 415: _ERR, 422: _ERR, 503: _ERR, 504: _ERR, **AUTH_ERRORS}


def _request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def _error(request: Request, status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, "request_id": _request_id(request)}, status_code=status,
                        headers=headers)


def require_key(request: Request, key: Optional[str] = Security(_key_scheme)) -> None:
    """Documents the key in OpenAPI; ApiKeyAuth has already refused bad keys before the body was read."""
    expected = request.app.state.api_key
    if expected is not None and not key_matches(expected, key):
        raise HTTPException(403 if key else 401, f"missing or wrong API key in the {API_KEY_HEADER} header")


def add_routes(app: FastAPI) -> None:
    web = WEB_DIR
    app.mount("/static", StaticFiles(directory=web), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(web / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # browsers and proxies ask for /favicon.ico whatever the page links; answer it rather than log a 404
        return FileResponse(web / "favicon.svg", media_type="image/svg+xml")

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(request: Request) -> dict:
        """The process is alive (and whether the API needs a key)."""
        return {"status": "ok", "auth_required": request.app.state.api_key is not None}

    @app.get("/readyz", response_model=Ready, responses={503: _ERR}, tags=["ops"])
    async def readyz(request: Request):
        """The model is loaded and a warm-up inference has run."""
        if not request.app.state.ready:
            return _error(request, 503, "model warming up; retry shortly")
        return {"status": "ready", "model_id": request.app.state.service.id}

    @app.get("/metrics", tags=["ops"], responses={200: {"content": {"text/plain": {}}}, **AUTH_ERRORS},
             dependencies=[Security(require_key)], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text exposition."""
        m = request.app.state.metrics
        return Response(m.render(), media_type=m.content_type)

    @app.get("/v1/model", response_model=ModelInfo, responses=AUTH_ERRORS, dependencies=[Security(require_key)],
             tags=["model"])
    async def model_info(request: Request) -> dict:
        """Label names, thresholds, input geometry, provenance summary and the research-use notice."""
        return request.app.state.service.describe()

    @app.post("/v1/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
              dependencies=[Security(require_key)], tags=["model"])
    async def predict(request: Request,
                      file: UploadFile = File(..., description="PNG, JPEG or DICOM Part 10 file"),
                      heatmap: bool = Query(False, description="add a heatmap overlay per finding"),
                      findings: Optional[str] = Query(None, description="comma-separated finding names to report "
                                                      "(default: all)")) -> dict:
        """Findings (most probable first, with thresholds and positive flags), abnormality score, quality-gate
        verdict, model id/version and the research-use notice; optional heatmaps."""
        state = request.app.state
        names = state.service.select(findings)
        if heatmap and not state.service.can_explain:
            raise RequestError("heatmaps need the torch model, which this server does not have (start it on a bundle "
                               "directory, or with --backend torch)")
        if len((await request.form()).getlist("file")) > 1:  # the parsed form is cached: no second read
            raise RequestError("more than one 'file' field in the form; send one image per request")
        if heatmap and not state.heatmap_slots.try_take(1):
            raise QueueFull(f"server busy: {state.settings.max_heatmaps} heatmap requests already in progress (the "
                            "server's limit); retry shortly, or ask without heatmap=true")
        data, held = b"", 0
        try:
            data = await file.read()
            if not state.upload_budget.try_take(len(data)):
                raise QueueFull(f"server busy: uploads in progress hold its limit of {state.settings.max_inflight_bytes} "
                                "bytes; retry shortly")
            held = len(data)
            return await asyncio.wait_for(_predict(request, data, names, heatmap), state.settings.timeout_s)
        except asyncio.TimeoutError:
            state.metrics.timeouts.inc()
            limit = state.settings.timeout_s
            raise HTTPException(504, f"prediction took longer than the server's limit of {limit:g} s (server busy or "
                                     "image too large); retry later") from None
        finally:
            state.upload_budget.give_back(held)
            if heatmap:
                state.heatmap_slots.give_back(1)


async def _predict(request: Request, data: bytes, names: list[str], heatmap: bool) -> dict:
    from cxrkit.deploy.serve.engine import decode_upload

    state = request.app.state
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    image, meta = await loop.run_in_executor(state.decode_pool, decode_upload, data, state.service.decode_limits,
                                             state.service.decode_max_side)
    t1 = time.perf_counter()
    result = await state.batcher.submit((image, meta))
    t2 = time.perf_counter()
    table = state.service.findings_table(result["probs"], names)
    response = {
        "notice": RESEARCH_NOTICE, "request_id": _request_id(request), "model_id": state.service.id,
        "model_version": state.service.version, "findings": table,
        "positive_findings": [r["name"] for r in table if r["positive"]],
        "abnormality": min(1.0, max(0.0, result["abnormality"])), "quality": result["quality"],
        "image": {"format": meta.get("source_format") or "unknown",
                  "width": int(meta.get("orig_width", image.shape[1])),
                  "height": int(meta.get("orig_height", image.shape[0]))},
        "heatmaps": None,
        "timing_ms": {"decode": _ms(t0, t1), "queue_and_model": _ms(t1, t2)},
        "runtime": state.service.runtime,
        **state.service.synthetic_fields(),
    }
    if heatmap:
        maps = await loop.run_in_executor(state.heatmap_pool, state.service.heatmaps, image, names)
        response["heatmaps"] = {**maps, "boxes": _positive_boxes(maps.get("boxes", {}), response, image)}
        response["timing_ms"]["heatmaps"] = _ms(t2, time.perf_counter())
    return response


def _positive_boxes(boxes: dict, response: dict, image) -> dict:
    """The boxes of the positive findings (as in the SR and ``cxr predict``), in the pixels of the uploaded image
    (``response["image"]``; the decoder may have reduced a huge film), as ``{x, y, w, h, score}`` objects."""
    f = response["image"]["width"] / image.shape[1]
    return {n: [{"x": round(b[0] * f, 1), "y": round(b[1] * f, 1), "w": round(b[2] * f, 1),
                 "h": round(b[3] * f, 1), "score": b[4]} for b in boxes.get(n, [])]
            for n in response["positive_findings"]}


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 2)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ())]
        if loc[:2] == ["body", "file"] or loc == ["body"]:
            parts.append("no file: upload the image as multipart/form-data in a form field named 'file'")
        else:
            parts.append(f"{'.'.join(loc)}: {err.get('msg', 'invalid')}")
    return "; ".join(dict.fromkeys(parts)) or "invalid request"


def add_handlers(app: FastAPI) -> None:
    """Every refusal is a JSON ``{"error", "status", "request_id"}``; bad input never becomes a 500."""

    @app.exception_handler(UnsupportedImage)
    async def _unsupported(request: Request, exc: UnsupportedImage):
        return _error(request, 415, f"unsupported file: {exc.reason}")

    @app.exception_handler(ImageError)
    async def _bad_image(request: Request, exc: ImageError):
        return _error(request, 400, f"image refused: {exc.reason}")

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError):
        return _error(request, 400, str(exc))

    @app.exception_handler(QueueFull)
    async def _busy(request: Request, exc: QueueFull):
        return _error(request, 503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(ServeError)
    async def _unavailable(request: Request, exc: ServeError):
        return _error(request, 503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400 and "parsing the body" in detail:
            detail = "malformed multipart/form-data body; upload the image in a form field named 'file'"
        return _error(request, exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(request, 422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("request_id=%s internal error", _request_id(request))
        return _error(request, 500, "internal server error; the request id is in the server log")
