"""Images: reading an image column's values, checking them before any model loads, and turning them into what a
vision-language model reads (each image's block of image tokens and its pixels, from the model's own processor).

A task's images come from ``datasets`` (a path, ``{"bytes", "path"}`` as its ``Image`` feature stores them, or a
decoded PIL image). A prompt shows an image where its template names the image column, e.g.
``"{image}What colour is the shape?"``.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from promptlab.errors import ConfigError


def resolve_paths(rows: list[dict], column: str, base: Path) -> None:
    """Relative image paths in a local data file mean "next to the file": made absolute here, in place."""
    for row in rows:
        value = row.get(column)
        if isinstance(value, str) and not os.path.isabs(value):
            row[column] = str(base / value)
        elif isinstance(value, dict) and isinstance(value.get("path"), str) and not value.get("bytes") \
                and not os.path.isabs(value["path"]):
            row[column] = {**value, "path": str(base / value["path"])}


def _lazy(value: object) -> Image.Image:
    """A PIL image opened from a path, ``{"bytes", "path"}`` or a PIL image: only its header is read yet."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"]))
    if isinstance(value, dict) and value.get("path"):
        return Image.open(value["path"])
    if isinstance(value, str) and value:
        return Image.open(value)
    raise ValueError(f"not an image: {str(value)[:80]!r} (a path, {{'bytes', 'path'}} or a PIL image)")


def open_image(value: object) -> Image.Image:
    """The RGB image a column value holds (see ``_lazy``)."""
    return _lazy(value).convert("RGB")


def check_images(rows: Sequence[Mapping], column: str, where: str) -> None:
    """Every row's image can be opened (its header read; cheap): one ConfigError naming the first that cannot."""
    for i, row in enumerate(rows):
        value = row.get(column)
        if isinstance(value, Image.Image):
            continue
        try:
            with _lazy(value):  # opening reads the header: the check; closing frees the file
                pass
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise ConfigError(f"{where} row {i}: column {column!r} is not a readable image ({err})",
                              "give a path to an image file (relative to the data file), or image bytes") from None


class ImageBlocks:
    """A vision-language processor's view of images: each image's token block (e.g. Idefics3's
    ``<fake_token_around_image><global-img><image>*64<fake_token_around_image>``) and its pixel tensors, computed
    once per image (few-shot demonstrations repeat the same images in every prompt)."""

    def __init__(self, processor):
        self.processor = processor
        self.token = processor.image_token  # what the chat template writes where an image goes
        self._cache: dict[object, tuple[list[int], dict[str, torch.Tensor]]] = {}
        self._pinned: list[Image.Image] = []  # PIL images cached by id: alive, so no other image takes the id

    def block(self, value: object) -> tuple[list[int], dict[str, torch.Tensor]]:
        """(token ids, pixel inputs) of one image; the pixel inputs are the processor's, for that image alone."""
        key = _identity(value)
        if key not in self._cache:
            try:
                out = self.processor(text=self.token, images=[open_image(value)], add_special_tokens=False,
                                     return_tensors="pt")
            except (OSError, ValueError, TypeError) as err:
                raise ConfigError(f"the model's processor rejects the image {str(value)[:80]!r}: {err}",
                                  "convert the image to RGB PNG or JPEG") from None
            pixels = {k: v[0] for k, v in out.items() if k.startswith("pixel")}
            self._cache[key] = (out["input_ids"][0].tolist(), pixels)
            if isinstance(value, Image.Image):
                self._pinned.append(value)
        return self._cache[key]


def _identity(value: object) -> object:
    """What names an image for the cache: its bytes' digest (a Hub row's ``path`` is a bare file name, the same in
    many datasets), else its path; a PIL image by identity (``ImageBlocks`` keeps it alive: an id is not reused)."""
    if isinstance(value, dict) and value.get("bytes"):
        return hashlib.sha1(value["bytes"]).hexdigest()
    if isinstance(value, dict):
        return value.get("path")
    return value if isinstance(value, str) else id(value)


def pixel_inputs(images: Sequence[Sequence[dict[str, torch.Tensor]]] | None,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """The model's image inputs for a batch (nothing for a batch without images): each row's images (in prompt
    order), zero-padded to the batch's most images and largest size, as Idefics3-style models take them
    (``pixel_values`` of shape (rows, images, C, H, W), all-zero images are padding, and ``pixel_attention_mask``
    marks real pixels)."""
    values = [torch.cat([im["pixel_values"] for im in row]) if row else None for row in images or ()]
    real = [v for v in values if v is not None]
    if not real:
        return {}
    n, c = max(v.shape[0] for v in real), real[0].shape[1]
    h, w = max(v.shape[2] for v in real), max(v.shape[3] for v in real)
    batch = torch.zeros(len(images), n, c, h, w, dtype=real[0].dtype)
    for i, v in enumerate(values):
        if v is not None:
            batch[i, : v.shape[0], :, : v.shape[2], : v.shape[3]] = v
    out = {"pixel_values": batch.to(device)}
    if "pixel_attention_mask" in next(row[0] for row in images if row):  # the processor's mask of real pixels, padded alike
        mask = torch.zeros(len(images), n, h, w, dtype=torch.long)
        for i, row in enumerate(images):
            if row:
                m = torch.cat([im["pixel_attention_mask"].long() for im in row])
                mask[i, : m.shape[0], : m.shape[1], : m.shape[2]] = m
        out["pixel_attention_mask"] = mask.to(device)
    return out
