"""The parameter layouts ``optarena speed`` times: synthetic ones and the shapes of real models."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

#: name → shapes: one big tensor, 200 medium ones, 2000 small ones.
LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "1x16M": [(4096, 4096)],
    "200x82K": [(256, 320)] * 200,
    "2000x1K": [(32, 32)] * 2000,
}


def yolov8n_shapes() -> list[tuple[int, ...]]:
    """The trained parameters' shapes of ultralytics' YOLOv8n detector (built from its yaml; no weights are
    loaded)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError as exc:  # ImportError, not SystemExit: a caller may go on without it
        raise ImportError(f"the yolov8n layout needs ultralytics ({exc}); pip install ultralytics") from exc
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False)
    return [tuple(p.shape) for p in model.parameters() if p.requires_grad]  # the DFL layer's weight is frozen


def vit_s_shapes() -> list[tuple[int, ...]]:
    """The parameter shapes of a ViT-S encoder: 12 torch.nn.TransformerEncoderLayer(384, 6 heads, MLP 1536)."""
    layer = torch.nn.TransformerEncoderLayer(384, 6, 1536, batch_first=True)
    return [tuple(p.shape) for _ in range(12) for p in layer.parameters()]


#: name → shapes of a real model's parameters, made on request (``--layouts``; not run by default): YOLOv8n has
#: 183 tensors of 35 shapes (3.2M elements; 147 under 32K elements), the ViT-S encoder 144 tensors (21.3M).
MODEL_LAYOUTS: dict[str, Callable[[], list[tuple[int, ...]]]] = {"yolov8n": yolov8n_shapes, "vit-s": vit_s_shapes}

#: ``--quick``: the same three kinds, small enough for a smoke test.
QUICK_LAYOUTS: dict[str, list[tuple[int, ...]]] = {
    "1x64K": [(256, 256)],
    "20x2K": [(32, 64)] * 20,
    "200x64": [(8, 8)] * 200,
}
