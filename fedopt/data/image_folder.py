"""A folder of images in ``torchvision.datasets.ImageFolder``'s layout, decoded with Pillow and
partitioned over clients.

Layout: ``data.path/<class>/**/<image>`` — one subfolder per class (classes are the subfolder
names in sorted order, class ``c`` = the ``c``-th; folders whose name starts with ``.`` are
skipped), images found recursively by their extension (:data:`IMAGE_EXTENSIONS`, any case), as
``ImageFolder`` does (links followed, each real folder walked once). Every class folder must
hold an image. ``data.test_path`` (optional) is a
second folder in the same layout whose classes are among the train classes; its images are the
test rows, each given to a client holding its class. Without it each client's rows are split
``data.test_fraction`` to test.

Each image is converted to RGB (``[3, H, W]``) or, with ``data.grayscale``, to 8-bit grey
(``[1, H, W]``), resized to ``data.image_size`` ``[H, W]`` with bilinear interpolation, and
scaled ``x / 255`` to float32 in ``[0, 1]``.

Sizes are bounded before they are allocated: the folder listing gives the number of images
``n``, and decoding starts only if ``3 · n · C · H · W · 4`` bytes (the rows, their float32
copies and the partition's reordering) fit in free memory; an image whose header declares more
than :data:`MAX_IMAGE_PIXELS` pixels is refused before it is decoded. A file Pillow cannot
decode is a ConfigError naming ``data.path`` (or ``data.test_path``) and the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BeforeValidator, Field

from fedopt.data.arrays import build_from_arrays
from fedopt.data.checks import TestFraction
from fedopt.data.dataset import FederatedDataset
from fedopt.data.files import check_fits, data_dir
from fedopt.data.partition import IidPartition, PartitionSpec
from fedopt.schema import Bool, ConfigError, PositiveInt, Schema, Str, path_like

#: image file extensions read (compared lower-case), as torchvision's ImageFolder
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
#: the largest image (width × height from its header) decoded
MAX_IMAGE_PIXELS = 2**26


class ImageFolderData(Schema):
    """``data: {name: image_folder, path: ...}``: one subfolder of images per class."""

    what = "data set 'image_folder'"
    name: Literal["image_folder"] = "image_folder"
    path: Annotated[Str, BeforeValidator(path_like)] = Field(
        ..., description="folder with one subfolder of images per class")
    test_path: Optional[Annotated[Str, BeforeValidator(path_like)]] = Field(
        None, description="test images in the same layout (null: split test_fraction)")
    image_size: Annotated[list[PositiveInt], Field(min_length=2, max_length=2)] = Field(
        [32, 32], description="[height, width] every image is resized to")
    grayscale: Bool = Field(False, description="1 grey channel (true) or 3 RGB (false)")
    num_clients: PositiveInt = 100
    partition: PartitionSpec = Field(default_factory=IidPartition)
    test_fraction: TestFraction = 0.2


def _expected(field: str) -> str:
    where = "data.path" if field == "data.path" else "data.test_path"
    return (f"{where} to be a folder with one subfolder of images "
            f"({', '.join(IMAGE_EXTENSIONS)}) per class, as torchvision's ImageFolder reads")


@dataclass(frozen=True)
class ImageListing:
    """The images of a folder: ``files[r]`` with class index ``labels[r]``; ``classes`` the
    class names (sorted subfolder names)."""

    files: list[Path]
    labels: np.ndarray
    classes: list[str]


def _walk_images(folder: Path) -> list[Path]:
    """The image files under ``folder``, following links (as ``ImageFolder``) but walking each
    real folder once: a link to an ancestor would otherwise repeat its images once per level
    until the path is too long (and two such links 2^depth times)."""
    seen: set[str] = set()
    found = []
    for d, dirs, fs in os.walk(folder, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        found += [Path(d) / f for f in fs if f.lower().endswith(IMAGE_EXTENSIONS)]
    return found


def list_images(path: Any, field: str = "data.path",
                classes: list[str] | None = None) -> ImageListing:
    """The images under ``path`` (listing only, nothing decoded; ``fedopt validate`` runs it).
    With ``classes`` (the train classes) each subfolder must be one of them and keeps its
    index. ConfigError naming ``field`` when the folder is missing, has no class subfolder, a
    class folder holds no image, or a class is not among ``classes``."""
    root = data_dir(path, _expected(field), field)
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise ConfigError(f"{field}: {root} has no class subfolders (expected {_expected(field)})")
    index = {c: i for i, c in enumerate(classes if classes is not None else names)}
    files: list[Path] = []
    labels: list[int] = []
    for c in names:
        if c not in index:
            raise ConfigError(f"{field}: class folder {c!r} is not a class of data.path "
                              f"({', '.join(index)})")
        found = sorted(_walk_images(root / c))
        if not found:
            raise ConfigError(f"{field}: class folder {root / c} holds no image "
                              f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [index[c]] * len(found)
    return ImageListing(files, np.asarray(labels, dtype=np.int64), list(index))


def image_shape(image_size: list[int], grayscale: bool) -> tuple[int, int, int]:
    """``(C, H, W)`` of the decoded rows."""
    return (1 if grayscale else 3, int(image_size[0]), int(image_size[1]))


def check_image_memory(rows: int, shape: tuple[int, ...], field: str = "data.path") -> None:
    """ConfigError naming ``field`` when decoding ``rows`` images of ``shape`` cannot fit."""
    check_fits(3 * rows * int(np.prod(shape)) * 4, f"decoding {rows:,} images of shape "
                                                   f"{list(shape)}", field)


def decode_images(files: list[Path], shape: tuple[int, int, int],
                  field: str = "data.path") -> np.ndarray:
    """``[len(files), C, H, W]`` float32 in ``[0, 1]`` (see the module doc)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ConfigError(f"{field}: reading images needs Pillow (pip install pillow, or "
                          f"pip install 'fedopt[plot]')") from None
    c, h, w = shape
    out = np.empty((len(files), h, w, c), dtype=np.uint8)
    for r, f in enumerate(files):
        try:
            with Image.open(f) as im:
                if im.width * im.height > MAX_IMAGE_PIXELS:
                    raise ConfigError(f"{field}: {f} is {im.width}x{im.height} pixels, more "
                                      f"than {MAX_IMAGE_PIXELS:,}")
                im = im.convert("L" if c == 1 else "RGB")
                im = im.resize((w, h), Image.Resampling.BILINEAR)
                out[r] = np.asarray(im).reshape(h, w, c)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError) as e:
            if isinstance(e, ConfigError):
                raise
            raise ConfigError(f"{field}: {f} is not an image Pillow can decode ({e})") from None
    return out.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def check_image_folder(path: Any, test_path: Any = None, image_size: list[int] = (32, 32),
                       grayscale: bool = False) -> tuple[int, tuple[int, int, int], int]:
    """``(train images, (C, H, W), classes)`` from the listings, with the memory bound checked;
    nothing is decoded."""
    train = list_images(path)
    shape = image_shape(list(image_size), grayscale)
    rows = len(train.files)
    if test_path is not None:
        rows += len(list_images(test_path, "data.test_path", train.classes).files)
    check_image_memory(rows, shape)
    return len(train.files), shape, len(train.classes)


def build_image_folder(path: str | Path, seed: int, *, test_path: str | Path | None = None,
                       image_size: list[int] = (32, 32), grayscale: bool = False,
                       num_clients: int = 100, partition: str | dict | None = None,
                       test_fraction: float = 0.2) -> FederatedDataset:
    """The images under ``path`` partitioned over ``num_clients`` clients (see the module doc)."""
    train = list_images(path)
    test = (list_images(test_path, "data.test_path", train.classes)
            if test_path is not None else None)
    shape = image_shape(list(image_size), grayscale)
    check_image_memory(len(train.files) + (len(test.files) if test else 0), shape)
    x = decode_images(train.files, shape)
    name = f"image_folder:{Path(str(path)).name}"
    classes = len(train.classes)
    if test is None:
        return build_from_arrays(x, train.labels, num_clients, partition, seed, test_fraction,
                                 num_classes=classes, name=name)
    xt = decode_images(test.files, shape, "data.test_path")
    return build_from_arrays(x, train.labels, num_clients, partition, seed, x_test=xt,
                             y_test=test.labels, num_classes=classes, name=name)
