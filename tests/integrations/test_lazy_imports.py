"""``import optarena`` (and the integrations package) must not import any framework, nor torch's compiler (only the
fused path needs it: ~1.3 s)."""

import os
import subprocess
import sys

FRAMEWORKS = ["ultralytics", "transformers", "lightning", "pytorch_lightning", "timm", "torchvision", "accelerate",
              "torch._inductor"]


def test_import_optarena_imports_no_framework() -> None:
    code = ("import sys, optarena, optarena.integrations; "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    # without the conftest's sitecustomize, which imports torchvision into every process to patch its nms
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and "optarena-integrations-" not in p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "[]"
