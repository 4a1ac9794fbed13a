"""The inspection page's explanation jobs: one request (:class:`Request`) becomes a job
that runs on a single worker thread (the cores go to TensorFlow's own threads), reports
its progress (occlusion's positions) and keeps its maps, as float32 arrays for the NPY
downloads and as PNG pictures, until newer jobs push it out."""

from __future__ import annotations

import io
import secrets
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from app.page.session import NotFound, RunSession
from fruitcnn import plots
from visualize.activations import activations
from visualize.explain_run import map_labels
from visualize.filters import filter_patterns, receptive_field
from visualize.methods import CAM_METHODS, METHODS, ExplainSettings, compute
from visualize.occlusion import default_patch

# Finished jobs kept for their downloads (older ones answer "unknown job").
KEPT_JOBS = 64
# Filter images drawn per request at most (gradient ascent on each: about 0.1 s a filter).
MAX_FILTERS = 64


@dataclass
class Job:
    """One explanation request: its progress, then its maps (float32 (H, W) or tiles)
    and figures (PNG bytes), or the error."""

    id: str
    what: str
    state: str = "queued"
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    seconds: float | None = None
    error: str | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    pngs: dict[str, bytes] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        found = {
            "id": self.id,
            "what": self.what,
            "state": self.state,
            "progress": [self.done, self.total],
            "seconds": None if self.seconds is None else round(self.seconds, 3),
            "error": self.error,
            "notes": self.notes,
        }
        if self.state == "done":
            found["maps"] = [
                {
                    "name": name,
                    "label": self.labels.get(name, name),
                    "png": f"/api/jobs/{self.id}/{name}.png",
                    "npy": f"/api/jobs/{self.id}/{name}.npy" if name in self.maps else None,
                    "range": _range(self.maps.get(name)),
                }
                for name in self.pngs
            ]
        return found


def _range(values) -> list[float] | None:
    if values is None or not np.size(values):
        return None
    return [float(np.min(values)), float(np.max(values))]


class Jobs:
    """Explanation jobs, one at a time on a worker thread (the machine's cores go to
    TensorFlow's own threads), kept for their downloads."""

    def __init__(self):
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self.lock = threading.Lock()
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")

    def submit(self, what: str, work) -> Job:
        job = Job(secrets.token_hex(8), what)
        with self.lock:
            self.jobs[job.id] = job
            while len(self.jobs) > KEPT_JOBS:
                self.jobs.popitem(last=False)
        self.worker.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work) -> None:
        job.state, job.started = "running", time.monotonic()
        try:
            work(job)
            job.state = "done"
        except (ValueError, LookupError) as error:
            job.state, job.error = "failed", str(error)
        except Exception as error:  # noqa: BLE001  (the page gets the message, the log the trace)
            traceback.print_exc()
            job.state, job.error = "failed", f"the explanation failed: {type(error).__name__}: {error}"
        finally:
            job.seconds = time.monotonic() - job.started

    def get(self, job_id: str) -> Job:
        with self.lock:
            if job_id not in self.jobs:
                raise NotFound(f"unknown job {job_id!r}; it finished too long ago or never existed.")
            return self.jobs[job_id]

    def close(self) -> None:
        self.worker.shutdown(wait=False, cancel_futures=True)


def heatmap_png(values: np.ndarray, cmap: str = "inferno", clip_percentile: float | None = None) -> bytes:
    """A map as a colour PNG at its own size, scaled to its own range (a constant map
    is drawn as zeros); the page draws it over the image with the opacity chosen."""
    values = np.asarray(values, np.float64)
    if clip_percentile is not None and values.size:
        values = np.minimum(values, np.percentile(values, clip_percentile))
    scaled = plots.unit_range(values)
    rgba = (colormaps[cmap](scaled) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


def image_png(image: np.ndarray) -> bytes:
    """A uint8 (H, W, C) image as PNG."""
    picture = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(picture, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Request:
    """An explanation request as the page sends it (checked by :func:`check_request`)."""

    method: str
    head: str
    target: int
    layer: str | None = None
    patch: int | None = None
    stride: int = 1
    fill: Any = "mean"
    engine: str = "auto"
    spread: str = "window"
    saliency_of: str = "loss"
    smoothgrad: int = 0
    filters: int = 16


def explain_work(session: RunSession, image: np.ndarray | None, request: Request):
    """The job's work for one request: a function of the job that fills its maps."""
    method = METHODS.get(request.method)
    if method is None:
        raise ValueError(f"unknown method {request.method!r}; the page offers {', '.join(METHODS)}.")
    if method.kind != "model" and image is None:
        raise ValueError(f"{request.method} explains an image: choose or upload one.")
    session.check_target(request.head, request.target)
    layer = session.check_layer(request.layer) if method.layered else None
    height, width, _ = session.image_shape
    patch = request.patch or default_patch(session.image_shape)
    for name, value, limit in (
        ("patch", patch, min(height, width)),
        ("stride", request.stride, min(height, width)),
    ):
        if not 1 <= value <= limit:
            raise ValueError(
                f"{name} must be 1..{limit} pixels for this model's {height}x{width} images, got {value}."
            )
    settings = ExplainSettings(
        layers=(layer,) if layer else (),
        patch=patch,
        stride=request.stride,
        fill=request.fill,
        occlusion_engine=request.engine,
        occlusion_spread=request.spread,
        saliency_of=request.saliency_of,
        saliency_smoothgrad=request.smoothgrad,
    )

    def work(job: Job) -> None:
        if method.kind == "map":
            _map_work(job, session, image, request, settings)
        elif request.method == "activations":
            with session.lock:
                values = activations(session.model, image[None], layer=layer)[0]
            tiles = np.moveaxis(values, -1, 0)
            job.maps["activations"] = tiles
            figure = plots.tile_figure(tiles, title=f"activations of {layer}")
            job.pngs["activations"] = plots.png_bytes(figure)
            job.labels["activations"] = f"{tiles.shape[0]} feature maps of {layer}"
        else:
            count = int(session.model.get_layer(layer).output.shape[-1])
            chosen = list(range(min(count, request.filters, MAX_FILTERS)))
            job.total = len(chosen)
            with session.lock:
                patterns = filter_patterns(session.model, layer=layer, filters=chosen)
                crop = receptive_field(session.model, layer)
            job.done = len(chosen)
            job.maps["filters"] = patterns
            title = f"{layer}: the inputs that drive each filter's centre unit hardest"
            figure = plots.filters_figure(
                patterns, title=title, labels=[str(index) for index in chosen], crop=crop
            )
            job.pngs["filters"] = plots.png_bytes(figure)
            job.labels["filters"] = f"filters 0..{len(chosen) - 1} of {layer} (of {count})"

    return work


def _map_work(job: Job, session: RunSession, image, request: Request, settings: ExplainSettings) -> None:
    def progress(done: int, total: int) -> None:
        job.done, job.total = done, total

    with session.lock:
        found = compute(
            request.method,
            session.model,
            image[None],
            head=request.head,
            targets=np.array([request.target]),
            settings=settings,
            progress=progress,
        )
    job.notes += found.notes
    labels = map_labels(session.model, settings, request.method in CAM_METHODS)
    for name, values in found.drawn.items():
        job.maps[name] = np.asarray(values[0], np.float32)
        clip = 99.0 if name.startswith("saliency") or name == "smoothgrad" else None
        job.pngs[name] = heatmap_png(values[0], clip_percentile=clip)
        job.labels[name] = labels.get(name, METHODS[request.method].summary)
