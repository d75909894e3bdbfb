"""A pure-PyTorch CPU ``torchvision::nms`` for machines where torchvision's C++ ops cannot load.

The torchvision wheel that pip resolves next to the CPU torch pin (0.28.0) ships a ``_C.so`` that does not load
here, and ``import torchvision`` then fails outright ("operator torchvision::nms does not exist": its fake-tensor
registration needs the op's schema). ultralytics and timm import torchvision, and ultralytics' validation calls
``torchvision.ops.nms``. :func:`install` defines the ``nms`` (and ``qnms``, which torchvision also registers)
schemas with a plain PyTorch implementation before torchvision is imported, with one warning. Nothing else of
torchvision's C++ ops is provided; where the real ops load, this does nothing. The arena's ultralytics workloads
install it in their worker processes, and the integration tests in theirs.
"""

from __future__ import annotations

import sys
import warnings

import torch

_LIBRARY: torch.library.Library | None = None  # kept alive: dropping the Library object removes its ops


def box_iou_row(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """IoU of one (x1, y1, x2, y2) box with each of ``boxes``."""
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    return inter / (area + areas - inter)


def nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS as torchvision's: indices of kept boxes, by decreasing score; IoU > threshold suppresses."""
    order = scores.argsort(descending=True, stable=True)
    boxes = dets[order]
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1:] |= box_iou_row(boxes[i], boxes[i + 1:]) > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)].to(dets.device)


def _qnms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    raise NotImplementedError("quantized nms is not provided by optarena's pure-PyTorch fallback")


def torchvision_ops_load() -> bool:
    """Whether torchvision imports with its own C++ ops (checked in a way that leaves no half-imported module)."""
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False
    return torchvision.extension._has_ops()


def install() -> bool:
    """Make ``import torchvision`` and ``torchvision.ops.nms`` work on CPU; True if the shim was needed."""
    global _LIBRARY
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:  # nothing to patch: what imports it will say it is missing
        return False
    if _LIBRARY is not None or torchvision_ops_load():
        return _LIBRARY is not None
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", nms, "CPU")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("qnms", _qnms, "CPU")
    import torchvision.ops.boxes

    # torchvision.ops.nms first asserts that the C++ library loaded; the op it then calls is ours
    torchvision.ops.boxes._assert_has_ops = lambda: None
    warnings.warn("torchvision's C++ ops do not load next to this torch: optarena installed a pure-PyTorch nms (CPU, "
                  "slower) so that ultralytics can validate", RuntimeWarning, stacklevel=2)
    return True
