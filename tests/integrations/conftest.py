"""Set-up for the framework integration tests: offline, every framework's files under a temporary directory, and
a pure-PyTorch CPU nms for torchvision (its registry wheel's C++ ops do not load next to the CPU torch pin)."""

import importlib.util
import os
import tempfile
from pathlib import Path

if importlib.util.find_spec("torchvision") is None:  # fail loudly, with the fix, rather than skip these tests
    raise ModuleNotFoundError('the integration tests need the "integrations" extra (torchvision is missing): '
                              'pip install -c constraints.txt -e ".[dev,integrations]"')

_HOME = Path(tempfile.mkdtemp(prefix="optarena-integrations-"))
# Before any framework is imported: where they would write settings, caches and logs, and no network.
for key, value in {
    "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": _HOME / "ultralytics", "MPLCONFIGDIR": _HOME / "matplotlib",
    "HF_HOME": _HOME / "huggingface", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
    "WANDB_DISABLED": "true", "WANDB_MODE": "disabled",
}.items():
    os.environ[key] = str(value)

import warnings  # noqa: E402

from optarena.integrations import torchvision_nms  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    torchvision_nms.install()

# The arena's worker processes (a fork server started from this environment) import these tests' modules by name
# and ultralytics too: a sitecustomize on their PYTHONPATH puts this folder on their path and installs the nms.
(_HOME / "site").mkdir()
(_HOME / "site" / "sitecustomize.py").write_text(
    f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    "import warnings\nwarnings.simplefilter('ignore', RuntimeWarning)\n"
    "from optarena.integrations import torchvision_nms\ntorchvision_nms.install()\n")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_HOME / "site"), os.environ.get("PYTHONPATH")]))
