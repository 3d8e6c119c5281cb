"""Streaming image sources: PNG/JPG files in a folder (recursive) or a zip, decoded one at a time to uint8 CHW.

Grayscale images stay 1-channel, everything else becomes RGB (feature networks adapt the channels, see
``features.py``).  Corrupt images and non-image files raise :class:`ImageReadError` naming the file
(``on_error="fail"``) or are skipped with a warning (``on_error="skip"``); ``dataset.json`` (EDM dataset zips),
hidden files and ``__MACOSX`` folders are ignored silently.  Files are visited in sorted order, so a source has a
fixed order and a rank of a multi-process run can take every ``world``-th file.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ..errors import AdasdeError

log = logging.getLogger("adasde")

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_IGNORED_NAMES = {"dataset.json", "thumbs.db", "desktop.ini"}
ON_ERROR = ("skip", "fail")


class ImageReadError(AdasdeError, ValueError):
    """An image file could not be read; the message names the file."""


def _ignored(rel: str) -> bool:
    parts = rel.replace("\\", "/").split("/")
    return parts[-1].lower() in _IGNORED_NAMES or any(p.startswith(".") or p == "__MACOSX" for p in parts)


def list_images(source: str | os.PathLike) -> list[str]:
    """Sorted relative names of the entries of a folder (recursive) or a zip (non-image files included)."""
    src = Path(source)
    if src.is_dir():
        names = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
    elif src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    elif src.exists():
        raise ImageReadError(f"{src}: not a folder or a zip archive of images")
    else:
        raise ImageReadError(f"{src}: no such folder or zip file")
    return sorted(n for n in names if not _ignored(n))


def decode_image(data: bytes, name: str) -> torch.Tensor:
    """Bytes of an image file -> uint8 tensor [C, H, W] (C = 1 for grayscale, else 3)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # an image of more pixels than PIL's bomb limit is refused like any unreadable file (PIL only warns
            # between 1x and 2x the limit, and raises DecompressionBombError beyond)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            im.load()
            if im.mode in ("L", "1", "I;16", "I", "F"):
                if im.mode != "L":
                    im = im.convert("L")
                arr = np.asarray(im, dtype=np.uint8)[None]
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning, MemoryError) as exc:
        raise ImageReadError(f"{name}: cannot decode image ({type(exc).__name__}: {exc}); delete or replace the file, "
                             "or pass on_error='skip' (--on-error skip) to ignore it") from exc
    return torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True))


def iter_images(
    source: str | os.PathLike, on_error: str = "fail", rank: int = 0, world: int = 1, skipped: list[str] | None = None,
    max_images: int | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, uint8 [C, H, W])`` for the images of a folder or zip, streaming, in sorted order.

    ``rank``/``world``: take every ``world``-th entry starting at ``rank`` (multi-process sharding).  Names of skipped
    files are appended to ``skipped``.  ``max_images`` caps the number of entries considered (before sharding).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    src = Path(source)
    names = list_images(src)
    if max_images is not None:
        names = names[:max_images]
    names = names[rank::world]
    zf = zipfile.ZipFile(src) if src.is_file() else None
    try:
        for name in names:
            where = f"{src}/{name}" if zf is None else f"{src}:{name}"
            try:
                if not name.lower().endswith(IMAGE_EXTS):
                    raise ImageReadError(f"{where}: not an image file (extension not in {', '.join(IMAGE_EXTS)}); "
                                         "remove it from the image folder or pass on_error='skip' (--on-error skip)")
                data = zf.read(name) if zf is not None else (src / name).read_bytes()
                img = decode_image(data, where)
            except ImageReadError as exc:
                if on_error == "fail":
                    raise
                log.warning("skipping %s", exc)
                if skipped is not None:
                    skipped.append(where)
                continue
            yield name, img
    finally:
        if zf is not None:
            zf.close()


def iter_batches(
    items: Iterator[tuple[str, torch.Tensor]], batch: int
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """Group ``(name, image)`` pairs into lists of at most ``batch``."""
    names: list[str] = []
    imgs: list[torch.Tensor] = []
    for name, img in items:
        names.append(name)
        imgs.append(img)
        if len(imgs) == batch:
            yield names, imgs
            names, imgs = [], []
    if imgs:
        yield names, imgs


def save_png(image: torch.Tensor, path: str | os.PathLike, text: dict[str, str] | None = None) -> None:
    """Write a uint8 [C, H, W] image (C = 1 or 3) as PNG, atomically; ``text`` adds PNG text chunks (e.g. the
    generation ``parameters``)."""
    from PIL import Image, PngImagePlugin

    arr = image.detach().cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for k, v in text.items():
            info.add_text(k, v)
    from ..fileio import atomic_save

    atomic_save(path, lambda f: Image.fromarray(arr).save(f, format="PNG", pnginfo=info), fsync=False)


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """One image file -> uint8 [C, H, W]; :class:`ImageReadError` names the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{p}: cannot read ({exc})") from exc
    return decode_image(data, str(p))
