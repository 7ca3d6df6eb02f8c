import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `python -m pytest` (the README's test command) puts the working directory, the repository root, first on
# sys.path. There the top-level folder `kernels/` (installed as `ctxzip.kernels`) shadows Hugging Face's
# `kernels` package, which transformers >= 5 imports at model load ("cannot import name 'CUDAProperties' from
# 'kernels'"). The tests import ctxzip as installed, so the root is taken off the path before anything loads.
_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != _ROOT]
_shadow = sys.modules.get("kernels")
if _shadow is not None and Path(getattr(_shadow, "__file__", "") or "").resolve().parent == _ROOT / "kernels":
    del sys.modules["kernels"]
