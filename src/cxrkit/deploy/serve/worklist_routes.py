"""The triaged worklist of a ``cxr node``, read from its spool: ``GET /v1/worklist``, ``GET /v1/worklist/{entry_id}``
and ``GET /v1/worklist/{entry_id}/images/{name}``. See docs/worklist.md.

The service only reads the spool through :mod:`cxrkit.deploy.dicom.worklist` (a read-only SQLite connection and the
PNG files the entries list); it never imports the node itself. The endpoints are plain ``def`` functions so FastAPI
runs the blocking SQLite reads in its thread pool, off the event loop.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from cxrkit import RESEARCH_NOTICE
from cxrkit.deploy.dicom import worklist as wl
from cxrkit.deploy.serve.errors import ServeError
from cxrkit.deploy.serve.routes import AUTH_ERRORS, require_key
from cxrkit.deploy.serve.schemas import ErrorResponse

log = logging.getLogger("cxrkit.serve")
MAX_PAGE = 1000
MAX_OFFSET = 2**31 - 1  # SQLite integers are 64-bit: an unbounded offset would be a 500
NOT_ENABLED = ("this server was started without a worklist; start it with `cxr serve BUNDLE --worklist SPOOL` "
               "(SPOOL: the --spool folder of the `cxr node`), or create_app(..., worklist_spool=SPOOL)")
_ERR = {"model": ErrorResponse}
WORKLIST_ERRORS = {404: _ERR, 503: _ERR, **AUTH_ERRORS}
# Films and heatmaps are patient images: never kept by browsers or proxies.
IMAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class WorklistFinding(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    probability: float = Field(..., ge=0.0, le=1.0)
    threshold: float
    positive: bool = Field(..., description="probability >= threshold")
    boxes: List[List[float]] = Field(default_factory=list,
                                     description="[x, y, w, h] around the hot region, source image pixels")


class WorklistFilm(BaseModel):
    model_config = ConfigDict(extra="allow")

    sop_key: str = Field(..., description="hashed SOP Instance UID of the source film")
    view: Optional[str] = None
    abnormality: float
    quality_ok: bool = Field(..., description="False: the film failed the quality gate; a human must read it")
    quality_reason: str
    findings: List[WorklistFinding] = Field(..., description="most probable first")
    images: Dict[str, str] = Field(default_factory=dict,
                                   description="'film' -> the film PNG; finding name -> its heatmap overlay PNG "
                                               "(GET .../images/{file})")


class WorklistEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    entry_id: str
    study_key: str
    study_instance_uid: str
    accession_number: Optional[str] = None
    study_date: Optional[str] = None
    received_at: float = Field(..., description="Unix time the first film of the batch arrived")
    processed_at: float
    priority: int = Field(..., description="tier, 0 = read first (see priority_rules)")
    priority_label: str = Field(..., description="urgent, check, abnormal or routine")
    priority_reason: str
    abnormality: float = Field(..., description="maximum over the films")
    quality_ok: bool = Field(..., description="False: at least one film failed the quality gate")
    synthetic_model: bool = Field(..., description="the model was trained on synthetic (phantom) data")
    films: List[WorklistFilm]
    skipped: List[Any] = Field(default_factory=list, description="(hashed SOP UID, reason) of films not read")
    delivery: Dict[str, int] = Field(..., description="result objects per delivery state: pending, sent, dead")
    notice: str


class PriorityRule(BaseModel):
    priority: int
    label: str
    rule: str


class WorklistPage(BaseModel):
    notice: str
    priority_rules: List[PriorityRule] = Field(..., description="lower tier first; inside a tier the higher "
                                                               "abnormality first, then the earlier arrival")
    total: int = Field(..., description="entries in the worklist")
    limit: int
    offset: int
    entries: List[WorklistEntry] = Field(..., description="most urgent first")


def check_spool(spool: str | Path | None) -> Optional[Path]:
    """The spool folder as a Path (None: no worklist). A missing folder is a start-up error; a folder without the
    node's database yet is allowed (the node may start after the service) and answers 503 until it appears."""
    if spool is None:
        return None
    path = Path(spool)
    if not path.is_dir():
        raise ServeError(f"--worklist {spool}: no such folder; pass the --spool folder of the `cxr node`")
    if not (path / wl.DB_NAME).is_file():
        log.warning("worklist: %s has no %s yet; /v1/worklist answers 503 until the node creates it", path, wl.DB_NAME)
    return path


def _spool(request: Request) -> Path:
    spool = getattr(request.app.state, "worklist_spool", None)
    if spool is None:
        raise HTTPException(404, NOT_ENABLED)
    return spool


def _read(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except wl.WorklistNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except wl.WorklistError as exc:  # no database / no table yet: the node has not started (or wrong folder)
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None


def add_worklist_routes(app: FastAPI) -> None:
    """Register the endpoints; they read ``app.state.worklist_spool`` (None: every one answers 404)."""

    @app.get("/v1/worklist", response_model=WorklistPage, responses=WORKLIST_ERRORS,
             dependencies=[Security(require_key)], tags=["worklist"])
    def worklist(request: Request, limit: int = Query(100, ge=1, le=MAX_PAGE, description="entries per page"),
                 offset: int = Query(0, ge=0, le=MAX_OFFSET, description="entries to skip")) -> dict[str, Any]:
        """The node's triaged worklist, most urgent first, with the priority rules and the research-use notice."""
        spool = _spool(request)
        entries = _read(wl.read_worklist, spool, limit=limit, offset=offset)
        return {"notice": RESEARCH_NOTICE, "total": _read(wl.count_entries, spool), "limit": limit,
                "offset": offset, "entries": entries,
                "priority_rules": [{"priority": t, "label": label, "rule": rule} for t, label, rule in
                                   wl.PRIORITY_RULES]}

    @app.get("/v1/worklist/{entry_id}", response_model=WorklistEntry, responses=WORKLIST_ERRORS,
             dependencies=[Security(require_key)], tags=["worklist"])
    def worklist_entry(request: Request, entry_id: str) -> dict[str, Any]:
        """One worklist entry (a processed batch of a study)."""
        return _read(wl.get_entry, _spool(request), entry_id)

    @app.get("/v1/worklist/{entry_id}/images/{name}", response_class=FileResponse, tags=["worklist"],
             responses={200: {"content": {"image/png": {}}, "description": "the PNG"}, **WORKLIST_ERRORS},
             dependencies=[Security(require_key)])
    def worklist_image(request: Request, entry_id: str, name: str) -> FileResponse:
        """A film or heatmap-overlay PNG of an entry, by the file name its ``films[].images`` lists (nothing else
        is served)."""
        path = _read(wl.entry_image, _spool(request), entry_id, name)
        return FileResponse(path, media_type="image/png", headers=IMAGE_HEADERS)
