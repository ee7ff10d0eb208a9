"""Content-keyed on-disk cache of encoder outputs (VAE latents, text embeddings).

Key = sha256(namespace, kind, content): for an image its size, mode and RGB pixel bytes; for
a caption its UTF-8 text. ``namespace`` names the encoder (e.g. a model file hash), so another
encoder never reads these entries. Entries are safetensors files written atomically (temp file
in the same folder, then os.replace): a crash never leaves a half-written entry under a real
key. Only safetensors is read - never pickle / torch.load. Returned tensors are on the CPU.

Layout: <directory>/<sha256(namespace)[:16]>/<key[:2]>/<key>.safetensors, plus a
namespace.txt in the namespace folder saying which encoder it belongs to.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import DatasetError

logger = logging.getLogger(__name__)

Encoded = torch.Tensor | tuple[torch.Tensor, ...]


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> float32 (1, 3, H, W) in 0..1."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).contiguous()


def image_key(image: Image.Image, namespace: str) -> str:
    rgb = image.convert("RGB")
    digest = hashlib.sha256()
    digest.update(f"musar-cache/v1\0{namespace}\0image\0{rgb.width}x{rgb.height}\0RGB\0".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def text_key(text: str, namespace: str) -> str:
    digest = hashlib.sha256(f"musar-cache/v1\0{namespace}\0text\0".encode())
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()


class EncodingCache:
    """Encode images / captions once; later calls with the same content load the stored result."""

    def __init__(self, directory, namespace: str,
                 encode_image: Callable[[torch.Tensor], Encoded] | None = None,
                 encode_text: Callable[[str], Encoded] | None = None):
        if not isinstance(namespace, str) or not namespace.strip():
            raise DatasetError(f"EncodingCache namespace should name the encoder (e.g. a model "
                               f"hash), got {namespace!r}")
        self.namespace = namespace
        self.folder = Path(directory).expanduser() / hashlib.sha256(namespace.encode()).hexdigest()[:16]
        self.encode_image, self.encode_text = encode_image, encode_text
        self.hits = self.misses = self.rewrites = 0
        self.folder.mkdir(parents=True, exist_ok=True)
        label = self.folder / "namespace.txt"
        if not label.exists():
            _atomic_write_text(label, namespace + "\n")

    def image(self, image: Image.Image) -> Encoded:
        """encode_image(1x3xHxW tensor in 0..1) for ``image``, from disk when cached."""
        if self.encode_image is None:
            raise DatasetError("this EncodingCache has no encode_image function; pass one")
        key = image_key(image, self.namespace)
        return self._get(key, "image", lambda: self.encode_image(image_to_tensor(image)))

    def text(self, caption: str) -> Encoded:
        """encode_text(caption), from disk when cached."""
        if self.encode_text is None:
            raise DatasetError("this EncodingCache has no encode_text function; pass one")
        if not isinstance(caption, str):
            raise DatasetError(f"captions must be strings, got {type(caption).__name__}")
        return self._get(text_key(caption, self.namespace), "text",
                         lambda: self.encode_text(caption))

    def path_for(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "rewrites": self.rewrites}

    def _get(self, key: str, kind: str, encode: Callable[[], Encoded]) -> Encoded:
        path = self.path_for(key)
        if path.exists():
            loaded = self._load(path)
            if loaded is not None:
                self.hits += 1
                return loaded
            self.rewrites += 1
        self.misses += 1
        value = _to_cpu(encode(), kind)
        self._store(path, value, kind)
        return value

    def _load(self, path: Path) -> Encoded | None:
        try:
            tensors = load_file(str(path))
            count = len(tensors)
            if list(tensors) == ["value"]:
                return tensors["value"]
            return tuple(tensors[str(i)] for i in range(count))
        except (OSError, SafetensorError, KeyError) as exc:
            logger.warning("cache entry %s is unreadable (%s); encoding again", path, exc)
            return None

    def _store(self, path: Path, value: Encoded, kind: str) -> None:
        if isinstance(value, torch.Tensor):
            tensors = {"value": value}
        else:
            tensors = {str(i): t for i, t in enumerate(value)}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:16]}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"kind": kind, "namespace": self.namespace})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _to_cpu(value, kind: str) -> Encoded:
    """Detached contiguous CPU copies; a tuple stays a tuple. Anything else is an error."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").contiguous().clone()
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return tuple(t.detach().to("cpu").contiguous().clone() for t in value)
    raise DatasetError(f"the {kind} encoder should return a tensor or a non-empty tuple of "
                       f"tensors, got {type(value).__name__}")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".namespace.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)
