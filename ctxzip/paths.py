"""Where ctxzip keeps its files: the user cache directory (``CTXZIP_CACHE_DIR`` overrides)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """Return (and create) ``$CTXZIP_CACHE_DIR/<parts>`` or the platform user cache dir for ctxzip."""
    root = os.environ.get("CTXZIP_CACHE_DIR")
    if root:
        base = Path(root).expanduser()
    else:
        from platformdirs import user_cache_dir

        base = Path(user_cache_dir("ctxzip"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
