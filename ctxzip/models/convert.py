"""GGUF → safetensors, once, in the user cache.

``transformers`` can read GGUF files but dequantises every tensor on each load (tens of seconds). The first load
of a GGUF model converts it: the model is loaded with ``from_pretrained(dir, gguf_file=...)``, the GGUF
quantizer is detached (so ``save_pretrained`` accepts it), model and tokenizer are saved as safetensors into a
temporary folder, a completion marker with the sha256 and size of every file is written *last*, and the folder
is renamed into place. Later loads read the safetensors directly (about a second).

An entry without a marker, or whose files do not match the marker, is partial or corrupt: it is removed and
rebuilt. Conversions of the same model by several processes are serialised by a file lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from .._lazy import require
from ..errors import ModelError
from ..paths import cache_dir
from .specs import ModelRef

__all__ = ["MARKER", "FORMAT", "converted_dir", "is_complete", "ensure_converted"]

MARKER = "ctxzip-converted.json"
FORMAT = 1

_VERIFIED: set[tuple[str, int]] = set()
_LOCK = threading.Lock()


def converted_dir(ref: ModelRef) -> Path:
    """Where the safetensors copy of ``ref`` lives: ``<cache>/models/<name>-<hash16>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(ref.name).name if os.sep in ref.name else ref.name)
    return cache_dir("models") / f"{safe.strip('_') or 'model'}-{ref.weights_hash[:16]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(directory: Path, *, source_hash: str | None = None, deep: bool = True) -> bool:
    """True when ``directory`` holds a finished conversion: marker present, every file of the right size and
    (``deep``) the right sha256. The deep check runs once per process and directory."""
    marker = directory / MARKER
    try:
        meta = json.loads(marker.read_text(encoding="utf-8"))
        mtime = marker.stat().st_mtime_ns
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return False
    if source_hash is not None and meta.get("source_sha256") != source_hash:
        return False
    files = meta["files"]
    if not any(name.endswith(".safetensors") for name in files):
        return False
    for name, info in files.items():
        path = directory / name
        try:
            if path.stat().st_size != info["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    if not deep:
        return True
    key = (str(directory), mtime)
    with _LOCK:
        if key in _VERIFIED:
            return True
    for name, info in files.items():
        if _sha256(directory / name) != info.get("sha256"):
            return False
    with _LOCK:
        _VERIFIED.add(key)
    return True


def _convert_into(ref: ModelRef, out: Path) -> None:
    torch = require("torch", feature="GGUF conversion")
    transformers = require("transformers", feature="GGUF conversion")
    require("gguf", feature="reading GGUF weights")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(ref.path), gguf_file=ref.gguf_file)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(ref.path), gguf_file=ref.gguf_file, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(
            f"transformers {transformers.__version__} could not read the GGUF file {ref.path / str(ref.gguf_file)} "
            f"({type(exc).__name__}: {exc}); its architecture or quantisation may be unsupported"
        ) from exc
    # The weights are dequantised already; drop the GGUF quantizer so the model serialises as a plain one.
    model.hf_quantizer = None
    for attr, value in (("is_quantized", False), ("quantization_method", None)):
        if hasattr(model, attr):
            setattr(model, attr, value)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    files = {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    marker = {
        "format": FORMAT,
        "name": ref.name,
        "source": str(ref.path / str(ref.gguf_file)),
        "source_sha256": ref.weights_hash,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    tmp_marker = out / (MARKER + ".tmp")
    tmp_marker.write_text(json.dumps(marker, indent=1), encoding="utf-8")
    os.replace(tmp_marker, out / MARKER)


def ensure_converted(ref: ModelRef) -> Path:
    """Return the directory of the safetensors copy of the GGUF model ``ref``, converting it first if needed."""
    if not ref.is_gguf:
        return ref.path
    final = converted_dir(ref)
    if is_complete(final, source_hash=ref.weights_hash):
        return final
    filelock = require("filelock", feature="GGUF conversion")
    root = final.parent
    with filelock.FileLock(str(root / f".{final.name}.lock"), timeout=3600):
        if is_complete(final, source_hash=ref.weights_hash):  # another process finished meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=str(root)))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared like any user cache
        try:
            _convert_into(ref, tmp)
            if final.exists():
                shutil.rmtree(final)  # partial or corrupt entry
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(final, source_hash=ref.weights_hash):
        raise ModelError(f"converting {ref.name} produced an incomplete cache entry at {final}; check disk space")
    return final
