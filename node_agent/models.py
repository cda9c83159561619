"""Real Earth-observation models shipped by optional packages (``pip install skyinfer[models]``)."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

CSMASK_PACKAGE = "ukis_csmask"
# DLR's cloud/cloud-shadow segmentation for 6 bands (Sentinel-2 L2A), input 1x6x256x256, 3 classes.
CSMASK_DEFAULT_FILE = "model_6b_l2a.onnx"


def find_csmask_model(filename: str = CSMASK_DEFAULT_FILE) -> Path | None:
    """Path of an ONNX file of the installed ``ukis-csmask`` package, or None when it is not installed.

    Looks for ``filename`` anywhere inside the package (its layout has changed between releases); when that
    name is absent, returns the first ``*6b*.onnx`` (or any ``*.onnx``) file, sorted by name.
    """
    if importlib.util.find_spec(CSMASK_PACKAGE) is None:
        return None
    root = importlib.resources.files(CSMASK_PACKAGE)
    base = Path(str(root))
    if not base.is_dir():
        return None
    candidates = sorted(base.rglob("*.onnx"))
    for pattern in (filename, "*6b*.onnx", "*.onnx"):
        hits = [p for p in candidates if p.match(pattern)]
        if hits:
            return hits[0]
    return None
