"""OpenVINO's CPU runtime for the exported ONNX graphs (``pip install 'cxrkit[openvino]'``).

Why a second CPU runtime: DenseNet's pre-activation BatchNorm sits on every concatenated feature map, so in ONNX
Runtime the static INT8 graph spends about as long de-quantising, normalising, re-quantising and transposing between
the int8 convolutions as it saves inside them (measured on 2 cores: 0.97-1.15x over fp32 this session). OpenVINO
fuses those per-channel steps into the quantised convolutions and runs the same ``model.int8.onnx`` 2.2-2.7x faster
than ONNX Runtime fp32 (docs/benchmarks.md). It can also run the fp32 graph in bf16 on CPUs with AMX/AVX512-BF16.

OpenVINO is much slower on a dynamic batch axis, so it runs shape-specialised compilations, one per batch *bucket*
(1, 4 and 16 by default; compiled on first use). A batch is cut into bucket-sized chunks, the last one padded, by
the plan with the fewest padded rows (:func:`plan_batches`). One compilation per power of two up to 64 held up to
seven copies of the weights and activation buffers (service RSS 1.4 GB at max batch 16); three bound it
(docs/benchmarks.md, "Memory").
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from cxrkit.deploy.graph_predictor import BackendError, GraphPredictor, _require_onnx_config

# OpenVINO's own default on AMX/AVX512-BF16 CPUs is bf16; fp32 and int8 graphs are asked for f32 explicitly so a
# result labelled fp32 is computed in fp32 (int8: the quantised convolutions in int8, the rest in fp32).
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


BUCKETS = (1, 4, 16)
CALL_COST = 0.5  # one extra inference call costs about half an image's compute (fixed per-call overhead)


def buckets_for(max_batch: int) -> tuple[int, ...]:
    """The default buckets below ``max_batch``, plus ``max_batch`` itself (the largest chunk)."""
    return tuple(sorted({b for b in BUCKETS if b < max_batch} | {max_batch}))


def plan_batches(n: int, buckets: tuple[int, ...]) -> list[int]:
    """Chunk sizes (each a bucket) covering ``n`` rows: full largest buckets, then the remainder by the plan of
    least padded rows + CALL_COST per call (ties: fewer calls). ``plan_batches(7, (1, 4)) == [4, 4]``."""
    top = buckets[-1]
    plan = [top] * (n // top)
    r = n - top * len(plan)
    if r:
        best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
        for k in range(1, r + 1):  # best[k]: cheapest chunks covering k rows
            options = []
            for b in buckets:
                prev = best[max(0, k - b)]
                options.append((prev[0] + b + CALL_COST, prev[1] + [b]))
            best[k] = min(options, key=lambda o: (o[0], len(o[1])))
        plan += sorted(best[r][1], reverse=True)
    return plan


class OpenVinoPredictor(GraphPredictor):
    """An exported bundle (``model.onnx`` or ``model.int8.onnx``) run by OpenVINO on the CPU."""

    def __init__(self, onnx_path: str | Path, config: dict | None = None, *, precision: str = "fp32",
                 threads: int | None = None, max_batch: int = 16, path: Path | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("the openvino backend needs the openvino package: pip install 'cxrkit[openvino]'") \
                from None
        if precision not in PRECISION_HINTS:
            raise BackendError(f"openvino precision {precision!r}: choose one of {list(PRECISION_HINTS)}")
        if max_batch < 1:
            raise BackendError(f"max_batch={max_batch}: must be at least 1")
        onnx_path = Path(onnx_path)
        config = _require_onnx_config(onnx_path, config)
        super().__init__(config, path=path)
        self.onnx_path, self.precision, self.max_batch, self.device = onnx_path, precision, max_batch, "cpu"
        self.buckets = buckets_for(max_batch)
        self._core = ov.Core()
        self._properties = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self._properties["INFERENCE_NUM_THREADS"] = int(threads)
        self._requests: dict[int, tuple] = {}
        self._lock = threading.Lock()  # infer requests are not re-entrant; the service may call from threads

    def runtime(self) -> dict[str, str]:
        return {"backend": "openvino", "precision": self.precision, "device": "cpu", "file": self.onnx_path.name}

    def _request(self, batch: int):
        """(infer request, output ports, output names) for a static batch size, compiled on first use."""
        if batch not in self._requests:
            model = self._core.read_model(str(self.onnx_path))
            model.reshape({model.input(0).get_any_name(): [batch, 1, self.input_size, self.input_size]})
            compiled = self._core.compile_model(model, "CPU", self._properties)
            ports = list(compiled.outputs)
            self._requests[batch] = (compiled.create_infer_request(), ports, [o.get_any_name() for o in ports])
        return self._requests[batch]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs for a normalised float batch: logits, embedding [, abnormal_logit]."""
        x = np.ascontiguousarray(x, np.float32)
        n = len(x)
        if n == 0:  # one padded row, none kept: the outputs still have their names and widths
            x = np.zeros((1, *x.shape[1:]), np.float32)
        parts: list[dict[str, np.ndarray]] = []
        start = 0
        with self._lock:
            for size in plan_batches(len(x), self.buckets):
                chunk = x[start:start + size]
                keep = min(len(chunk), max(0, n - start))
                if size > len(chunk):
                    chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
                request, ports, names = self._request(size)
                result = request.infer({0: chunk})
                # copy: the request's output buffers are overwritten by its next inference
                parts.append({name: np.array(result[port][:keep]) for port, name in zip(ports, names)})
                start += size
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
