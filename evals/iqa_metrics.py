"""Evaluation metrics by name: pyiqa's, with availability detection, plus PSNR/SSIM and UIQM/UCIQE.

Every metric a suite names resolves to a :class:`MetricInfo`. Full-reference ones (PSNR, SSIM, LPIPS) need
the ground truth and are skipped for images without one; no-reference ones score any image.

A pyiqa metric runs when its weights can be had: needing none (PSNR, SSIM, PIQE), cached in pyiqa's or
torch's download cache, in a local folder (``$RESTORA_IQA_WEIGHTS``, ``../shared/weights/pyiqa``, the
folder passed in), or downloadable. Every metric is first created with network access cut (what is on disk
only); only if that fails, and downloads are possible, is it created again with the network. Offline
(``HF_HUB_OFFLINE=1``, ``RESTORA_OFFLINE=1``, or no route to the hub within
:data:`NETWORK_PROBE_TIMEOUT_S`) no download is attempted and the metric is reported as
``"unavailable: weights missing ..."``; the run goes on without it.

Score directions come from pyiqa's ``lower_better`` (the created metric's, or its default configuration's,
exactly as pyiqa decides it), never assumed. PSNR and SSIM are computed by :mod:`evals.metrics` with the
restoration papers' (BasicSR's) studio-range Y; pyiqa's ``psnry``/``ssim`` use the full-range YIQ luma instead
and read about 1.3 dB lower on PSNR. Their directions come from pyiqa's ``psnry``, ``ssim``, ``psnr`` and
``ssimc`` entries. UIQM and UCIQE are not in pyiqa; both papers define them as higher-is-better.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

#: Seconds the one-time probe for a route to the Hugging Face hub may take.
NETWORK_PROBE_TIMEOUT_S = 2.0
#: Host probed to decide whether downloads can work.
NETWORK_PROBE_HOST = ("huggingface.co", 443)
#: Longest image side no-reference pyiqa metrics see; larger images are downscaled first (cost bound).
NR_MAX_SIDE = 1024

AVAILABLE = "available"


@dataclass(frozen=True)
class MetricInfo:
    """How one evaluation metric is computed and where its direction comes from."""

    name: str
    mode: Literal["FR", "NR"]
    source: Literal["pyiqa", "local", "underwater"]
    pyiqa_name: str | None = None
    description: str = ""


METRICS: dict[str, MetricInfo] = {
    "psnr": MetricInfo("psnr", "FR", "local", "psnry", "PSNR on BT.601 Y (dB)"),
    "ssim": MetricInfo("ssim", "FR", "local", "ssim", "SSIM on BT.601 Y"),
    "psnr_rgb": MetricInfo("psnr_rgb", "FR", "local", "psnr", "PSNR on RGB (dB)"),
    "ssim_rgb": MetricInfo("ssim_rgb", "FR", "local", "ssimc", "SSIM, mean of R, G, B"),
    "lpips": MetricInfo("lpips", "FR", "pyiqa", "lpips", "LPIPS (AlexNet)"),
    "niqe": MetricInfo("niqe", "NR", "pyiqa", "niqe", "NIQE"),
    "piqe": MetricInfo("piqe", "NR", "pyiqa", "piqe", "PIQE"),
    "brisque": MetricInfo("brisque", "NR", "pyiqa", "brisque", "BRISQUE"),
    "musiq": MetricInfo("musiq", "NR", "pyiqa", "musiq", "MUSIQ (KonIQ)"),
    "clipiqa": MetricInfo("clipiqa", "NR", "pyiqa", "clipiqa", "CLIP-IQA"),
    "maniqa": MetricInfo("maniqa", "NR", "pyiqa", "maniqa", "MANIQA (KonIQ)"),
    "nima": MetricInfo("nima", "NR", "pyiqa", "nima", "NIMA (AVA)"),
    "uiqm": MetricInfo("uiqm", "NR", "underwater", None, "UIQM (Panetta et al. 2016)"),
    "uciqe": MetricInfo("uciqe", "NR", "underwater", None, "UCIQE (Yang & Sowmya 2015)"),
}

#: Directions of the metrics pyiqa does not have, as their papers define them.
_PAPER_LOWER_BETTER = {"uiqm": False, "uciqe": False}

_NETWORK: bool | None = None


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of ``name``; unknown names raise ``ValueError`` with close matches."""
    if name not in METRICS:
        import difflib

        close = difflib.get_close_matches(name, list(METRICS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown metric {name!r}{hint}; known: {', '.join(METRICS)}")
    return METRICS[name]


def offline_requested() -> bool:
    """Whether the environment asks for offline operation (``HF_HUB_OFFLINE`` or ``RESTORA_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "RESTORA_OFFLINE")
    )


def network_available(timeout: float = NETWORK_PROBE_TIMEOUT_S, refresh: bool = False) -> bool:
    """Whether weights could be downloaded: ``False`` when offline is requested, else one cached probe."""
    global _NETWORK
    if offline_requested():
        return False
    if _NETWORK is None or refresh:
        try:
            with socket.create_connection(NETWORK_PROBE_HOST, timeout=timeout):
                _NETWORK = True
        except OSError:
            _NETWORK = False
        logger.info("network for weight downloads: %s", "available" if _NETWORK else "unavailable")
    return _NETWORK


class NetworkBlockedError(OSError):
    """Raised by any connection attempt made while :func:`no_network` is active."""


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Cut network access for the block: name lookups and connections fail at once; hub libraries go offline."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkBlockedError("network access is disabled while loading metrics offline")

    saved = (socket.getaddrinfo, socket.create_connection, socket.socket.connect)
    saved_env = {v: os.environ.get(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    hub_constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants as hub_constants  # reads HF_HUB_OFFLINE once, at import
    hub_offline = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.socket.connect = refuse  # type: ignore[method-assign]
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True  # no retry loops: the hub client answers from its cache only
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = hub_offline
        socket.getaddrinfo, socket.create_connection = saved[0], saved[1]  # type: ignore[assignment]
        socket.socket.connect = saved[2]  # type: ignore[method-assign]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def pyiqa_lower_better(pyiqa_name: str) -> bool:
    """Return pyiqa's direction for ``pyiqa_name`` from its default configuration (what ``create_metric`` uses)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if pyiqa_name not in DEFAULT_CONFIGS:
        raise ValueError(f"pyiqa has no metric {pyiqa_name!r}; upgrade pyiqa with pip install -U pyiqa")
    return bool(DEFAULT_CONFIGS[pyiqa_name].get("lower_better", False))


def _local_weights(name: str, weights_dir: str | Path | None) -> Path | None:
    from agent.iqa import find_weights

    return find_weights(name, weights_dir)


def _resize_for_nr(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if max(h, w) <= NR_MAX_SIDE:
        return image
    import cv2

    f = NR_MAX_SIDE / max(h, w)
    return cv2.resize(image, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)


class MetricSet:
    """The metrics of one suite: created lazily, each either available or marked unavailable with a reason.

    Args:
        names: Metric names (keys of :data:`METRICS`).
        device: Torch device for pyiqa metrics.
        weights_dir: Extra folder searched for pyiqa weight files.
        allow_download: ``None`` decides by :func:`network_available` (probed only when a metric is not on disk);
            ``False`` never downloads. Metrics are always first created from disk with the network cut.
    """

    def __init__(
        self,
        names: list[str],
        device: str = "cpu",
        weights_dir: str | Path | None = None,
        allow_download: bool | None = None,
    ) -> None:
        self.infos = [metric_info(n) for n in names]
        self.device = device
        self.weights_dir = weights_dir
        self.allow_download = allow_download
        self._status: dict[str, str] | None = None
        self._pyiqa: dict[str, Any] = {}
        self._lower: dict[str, bool] = {}

    @property
    def names(self) -> list[str]:
        """The requested metric names, in order."""
        return [i.name for i in self.infos]

    def _create(self, info: MetricInfo) -> tuple[Any | None, str]:
        """Create a pyiqa metric: first from what is on disk (network cut), then by downloading if allowed."""
        import pyiqa

        assert info.pyiqa_name is not None
        kwargs: dict[str, Any] = {}
        local = _local_weights(info.name, self.weights_dir)
        if local is not None:
            kwargs["pretrained_model_path"] = str(local)
        attempts = [False]
        online = self.allow_download if self.allow_download is not None else None
        error: Exception | None = None
        for download in attempts:
            guard = contextlib.nullcontext() if download else no_network()
            try:
                with guard, contextlib.redirect_stdout(io.StringIO()):
                    return pyiqa.create_metric(info.pyiqa_name, device=self.device, **kwargs), AVAILABLE
            except Exception as exc:  # pyiqa, torch.hub, timm and HF raise many kinds; one metric must not stop a run
                error = exc
            if not download and (online if online is not None else network_available()):
                attempts.append(True)
        how = "offline, nothing cached" if len(attempts) == 1 else f"download failed: {type(error).__name__}: {error}"
        return None, (
            f"unavailable: weights missing ({how}); put the weights in pyiqa's cache (~/.cache/torch/hub/pyiqa) "
            "or $RESTORA_IQA_WEIGHTS, or run once with network access"
        )

    def availability(self) -> dict[str, str]:
        """Per metric ``"available"`` or ``"unavailable: <why>"``; creates the available pyiqa metrics."""
        if self._status is not None:
            return self._status
        status: dict[str, str] = {}
        for info in self.infos:
            if info.source == "underwater":
                status[info.name] = AVAILABLE
                self._lower[info.name] = _PAPER_LOWER_BETTER[info.name]
                continue
            assert info.pyiqa_name is not None
            if info.source == "local":
                status[info.name] = AVAILABLE
                self._lower[info.name] = pyiqa_lower_better(info.pyiqa_name)
                continue
            metric, why = self._create(info)
            status[info.name] = why
            self._lower[info.name] = (
                bool(metric.lower_better) if metric is not None else pyiqa_lower_better(info.pyiqa_name)
            )
            if metric is not None:
                self._pyiqa[info.name] = metric
            else:
                logger.warning("metric %s %s", info.name, why)
        self._status = status
        return status

    def lower_better(self) -> dict[str, bool]:
        """Per metric, whether lower scores are better (pyiqa's ``lower_better``; the papers' for UIQM/UCIQE)."""
        self.availability()
        return dict(self._lower)

    def active(self) -> list[str]:
        """Names of the metrics that will be scored."""
        return [n for n, s in self.availability().items() if s == AVAILABLE]

    def score(self, image: np.ndarray, reference: np.ndarray | None = None) -> dict[str, float]:
        """Score ``image`` (float32 ``(H, W, 3)`` in ``[0, 1]``) with every available metric.

        Full-reference metrics need ``reference`` of the same shape and are skipped without it. A metric
        that fails on this image is left out of the result (and logged), never raised.
        """
        self.availability()
        values: dict[str, float] = {}
        small: np.ndarray | None = None
        for info in self.infos:
            if self._status is None or self._status.get(info.name) != AVAILABLE:
                continue
            if info.mode == "FR" and reference is None:
                continue
            try:
                if info.source == "pyiqa" and info.mode == "NR":
                    small = _resize_for_nr(image) if small is None else small
                    value = self._score_pyiqa(info.name, small, None)
                else:
                    value = self._compute(info, image, reference)
            except Exception as exc:  # one metric failing on one image must not stop the run
                logger.warning("metric %s failed on an image: %s: %s", info.name, type(exc).__name__, exc)
                continue
            if np.isfinite(value):
                values[info.name] = float(value)
        return values

    def _compute(self, info: MetricInfo, image: np.ndarray, reference: np.ndarray | None) -> float:
        if info.source == "underwater":
            from evals.underwater_metrics import uciqe, uiqm

            return uiqm(image) if info.name == "uiqm" else uciqe(image)
        if info.source == "local":
            from evals.metrics import psnr, ssim

            assert reference is not None
            fn: Callable[..., float] = psnr if info.name.startswith("psnr") else ssim
            return fn(image, reference, on="rgb" if info.name.endswith("_rgb") else "y")
        return self._score_pyiqa(info.name, image, reference)

    def _score_pyiqa(self, name: str, image: np.ndarray, reference: np.ndarray | None) -> float:
        import torch

        def tensor(array: np.ndarray) -> Any:
            return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))[None].to(
                self.device
            )

        metric = self._pyiqa[name]
        with torch.no_grad():
            out = metric(tensor(image)) if reference is None else metric(tensor(image), tensor(reference))
        return float(out.item())


def better(value: float, baseline: float, lower_better: bool, tolerance: float = 0.0) -> bool:
    """Whether ``value`` beats ``baseline`` by more than ``tolerance`` in the metric's direction."""
    return value < baseline - tolerance if lower_better else value > baseline + tolerance


def worse(value: float, baseline: float, lower_better: bool, tolerance: float = 0.0) -> bool:
    """Whether ``value`` is worse than ``baseline`` by more than ``tolerance`` in the metric's direction."""
    return value > baseline + tolerance if lower_better else value < baseline - tolerance
