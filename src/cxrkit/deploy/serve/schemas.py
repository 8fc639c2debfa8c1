"""Response shapes of the REST API (documented in the OpenAPI schema and checked by the schemathesis test)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(..., description="what was wrong and what to do")
    status: int
    request_id: Optional[str] = None


class Finding(BaseModel):
    name: str
    probability: float = Field(..., ge=0.0, le=1.0)
    threshold: float
    positive: bool = Field(..., description="probability >= threshold")


class Quality(BaseModel):
    ok: bool = Field(..., description="False: the image does not look like a frontal chest radiograph the model "
                                      "can be trusted on")
    score: Optional[float] = Field(None, description="gate score (>= 0 passes); null without a fitted gate")
    reason: str


class ImageInfo(BaseModel):
    format: str
    width: int
    height: int


class Box(BaseModel):
    x: float = Field(..., description="left edge, pixels of the uploaded image")
    y: float = Field(..., description="top edge, pixels of the uploaded image")
    w: float
    h: float
    score: float = Field(..., description="the evidence map's peak inside the box, in [0, 1]")


class Heatmaps(BaseModel):
    method: str = Field(..., description="the map method: cam, attention, gradcam, gradcam++, layercam, "
                                         "layercam-x4, layercam-x8, cam-layercam, or per-finding (each finding's own method, "
                                         "tuned on validation: cxr tune-boxes)")
    image: str = Field(..., description="the decoded image at display size, data:image/png;base64")
    overlays: Dict[str, str] = Field(..., description="finding -> transparent RGBA heatmap (jet colours, alpha = "
                                                    "heat), same aspect as `image` with a long side of at most 128 "
                                                    "px: scale it over `image`; data:image/png;base64")
    boxes: Dict[str, List[Box]] = Field(default_factory=dict, description="positive finding -> boxes of its "
                                        "evidence map (the bundle's tuned box parameters for that finding and "
                                        "method, else the defaults; docs/explain.md), hottest first")


class PredictResponse(BaseModel):
    notice: str
    request_id: str
    model_id: str
    model_version: str
    findings: List[Finding] = Field(..., description="most probable first")
    positive_findings: List[str]
    abnormality: float = Field(..., ge=0.0, le=1.0)
    quality: Quality
    image: ImageInfo
    heatmaps: Optional[Heatmaps] = None
    timing_ms: Dict[str, float]
    runtime: Optional[Dict[str, Any]] = Field(None, description="what ran the model: backend, precision, device, "
                                              "how it was chosen and, for INT8, its recorded accuracy change")
    synthetic_training_data: bool = Field(False, description="the model was trained on synthetic phantom films")
    warning: Optional[str] = Field(None, description="set when the findings must not be read as real ones")
    synthetic_initialisation: bool = Field(False, description="the model started from weights trained on phantom "
                                           "films, then was trained on real ones")
    note: Optional[str] = Field(None, description="set when synthetic_initialisation is true")


class ModelInfo(BaseModel):
    model_id: str
    model_version: str
    label_names: List[str]
    thresholds: Dict[str, float]
    threshold_policy: Optional[str] = None
    input: Dict[str, Any]
    architecture: Optional[str] = None
    calibration: Optional[str] = None
    quality_gate: Optional[str] = None
    heatmaps: bool
    runtime: Dict[str, str]
    runtime_choice: Optional[Dict[str, Any]] = Field(None, description="how the runtime was chosen (auto or asked "
                                                     "for), why, and the INT8 graph's recorded accuracy change")
    provenance: Dict[str, Any]
    metrics: Dict[str, Any]
    service_version: str
    notice: str
    synthetic_training_data: bool = False
    warning: Optional[str] = None
    synthetic_initialisation: bool = False
    note: Optional[str] = None


class Health(BaseModel):
    status: str
    auth_required: bool


class Ready(BaseModel):
    status: str
    model_id: str
