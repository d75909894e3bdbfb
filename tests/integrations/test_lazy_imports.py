"""``import optarena`` (and the integrations package) must not import any framework, nor torch's compiler (only the
fused path needs it: ~1.3 s)."""

import subprocess
import sys

FRAMEWORKS = ["ultralytics", "transformers", "lightning", "pytorch_lightning", "timm", "torchvision", "accelerate",
              "torch._inductor"]


def test_import_optarena_imports_no_framework() -> None:
    code = ("import sys, optarena, optarena.integrations; "
            f"print([m for m in {FRAMEWORKS!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"
