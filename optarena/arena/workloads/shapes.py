"""The ``yolo_shapes`` detection data set: rectangles and ellipses on noise, with YOLO labels and a ``data.yaml``.

Generated once per size into a cache folder (``$OPTARENA_CACHE`` or ``~/.cache/optarena``), from a fixed seed, so
every run and every machine trains on the same images. Several workers may generate it at once: each writes a
private folder and renames it into place; the first rename wins.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ...validation import check_positive_int

CLASSES = ("rectangle", "ellipse")
#: Bumped when the images change: a new version is a new folder (and a new task fingerprint).
VERSION = 1


def cache_root() -> Path:
    return Path(os.environ.get("OPTARENA_CACHE") or Path.home() / ".cache" / "optarena")


def _draw(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[str]]:
    """One image: uniform noise, then one to three filled shapes (20-55% of the side) in saturated colours."""
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    lines = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(0, len(CLASSES)))
        w, h = (rng.uniform(0.2, 0.55, 2) * size).astype(int)
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if cls == 0:
            mask = (xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)
        else:
            cx, cy = x0 + w / 2, y0 + h / 2
            mask = ((xx + 0.5 - cx) / (w / 2)) ** 2 + ((yy + 0.5 - cy) / (h / 2)) ** 2 <= 1
        img[mask] = rng.integers(0, 256, 3, dtype=np.uint8) // 2 + np.array([128, 0, 0])[rng.permutation(3)]
        lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return img, lines


def generate(root: Path, train: int, val: int, size: int, seed: int = 0, path: Path | None = None) -> Path:
    """Write ``train`` and ``val`` images of ``size``² pixels with labels under ``root``; return its data.yaml,
    which names ``path`` (default ``root``) as the data set's folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            img, lines = _draw(rng, size)
            Image.fromarray(img).save(root / "images" / split / f"{i:05d}.png")
            (root / "labels" / split / f"{i:05d}.txt").write_text("\n".join(lines) + "\n")
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(CLASSES))
    data = root / "data.yaml"
    data.write_text(f"path: {path or root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return data


def dataset(train: int, val: int, size: int, root: Path | None = None) -> Path:
    """The data.yaml of the cached data set of this size, generated on first use."""
    for name, value in (("train", train), ("val", val), ("size", size)):
        check_positive_int(f"yolo_shapes {name}", value)
    root = cache_root() if root is None else Path(root)
    final = root / f"yolo_shapes-v{VERSION}-{train}-{val}-{size}px"
    if not (final / "data.yaml").is_file():
        root.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".yolo_shapes-", dir=root))
        generate(scratch, train, val, size, path=final)
        try:
            scratch.rename(final)
        except OSError:  # another worker was first; its copy is the same
            shutil.rmtree(scratch, ignore_errors=True)
    return final / "data.yaml"


#: Per budget: images, their side, ultralytics' training size, epochs, batch. ``quick`` is sized so that
#: ``--tasks yolo_shapes --optimizers adamw,lion,rlion,MuSGD --budget quick`` ends within 10 minutes on 2 cores.
SIZES = {
    "tiny": {"train": 16, "val": 8, "size": 64, "imgsz": 64, "epochs": 1, "batch": 8},
    "quick": {"train": 256, "val": 64, "size": 64, "imgsz": 64, "epochs": 8, "batch": 16},
    "full": {"train": 1024, "val": 128, "size": 96, "imgsz": 96, "epochs": 30, "batch": 16},
}


def make_yolo_shapes(budget: str = "quick", root: Path | None = None):
    """yolov8n, built from ``yolov8n.yaml`` (no weights), learning to find rectangles and ellipses on noise; the
    metric is ultralytics' validation mAP50-95. The data set is generated on the first run (see :func:`dataset`).
    ``nbs`` (ultralytics' nominal batch) is the batch, so every batch is an optimizer step."""
    from . import ultralytics_task

    if budget not in SIZES:
        raise ValueError(f"Invalid budget: {budget!r} (expected one of {', '.join(SIZES)})")
    sizes = SIZES[budget]
    root = cache_root() if root is None else Path(root)
    data = root / f"yolo_shapes-v{VERSION}-{sizes['train']}-{sizes['val']}-{sizes['size']}px" / "data.yaml"
    options = {"epochs": sizes["epochs"], "imgsz": sizes["imgsz"], "batch": sizes["batch"], "nbs": sizes["batch"],
               "warmup_epochs": 1.0, "close_mosaic": 0, "cache": "ram"}
    task = ultralytics_task("yolov8n.yaml", str(data), options, budget, name="yolo_shapes", generated_by="shapes")
    inner = task.run

    def run(*args, **kwargs):
        dataset(sizes["train"], sizes["val"], sizes["size"], root)
        return inner(*args, **kwargs)

    task.run = run
    task.description = (f"yolov8n (from its yaml) detecting rectangles and ellipses on noise: {sizes['train']} "
                        f"images of {sizes['size']} px, {sizes['epochs']} epochs (steps = epochs); full suite only")
    return task
