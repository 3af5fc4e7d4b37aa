"""What a search's data must be: each problem decided once, each refusal one line naming the
file (or the Dataset's item) and what is wrong.

Refused:
- no images: an empty .npz or Dataset, a folder without images, a class folder without images;
- a file that is not what its name says: an .npz that is not a NumPy zip of arrays (a broken or
  truncated zip, a .npy, pickled objects), an image file that Pillow cannot decode;
- non-finite pixel values (NaN, inf): training on them ends in NaN weights, and the per-channel
  normalisation of in-memory data would spread them to every image;
- images that are not (N, C, H, W) of float or uint8 (channels-last arrays get a hint), image
  tensors of a Dataset that are not float (torchvision's ToTensor gives float);
- labels missing, not one per image, not integers (floats, even whole ones, or booleans),
  negative, or of another number of classes than the head of the table's macro-architecture
  (more: the head cannot hold them; fewer: the table priced that head: build one for yours);
- images whose resolution is not the macro-architecture's input, non-square images, images of
  several sizes, channels other than 1 or 3: the table priced the network at its input, so the
  images are the user's to resize (with the transform of their choice), or the table to rebuild.
Adapted:
- uint8 images are scaled to [0, 1]; in-memory data are normalised per channel (mean 0, std 1);
- single-channel images are repeated to the stem's three channels; image files are read as RGB
  (alpha dropped) unless every one is grayscale;
- in class folders, hidden files and files whose suffix is not an image's are skipped.

Cost: in-memory data (an .npz, an image folder) are checked whole as they are loaded, in one
streaming pass. Any other Dataset: its labels when it lists them (`targets`, `labels`) and a
sample of SAMPLE items before the run starts, then every item as its batch is read (in the
DataLoader's workers): the first bad one stops the run, naming its file (Datasets that list
their files as `samples` or `imgs`, as torchvision's ImageFolder does, or `files`) or its index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hwnas.errors import HwnasError

SAMPLE = 16  # items of a Dataset read and checked before a run starts
CHUNK = 4096  # images checked for non-finite values at a time (a bounded temporary)


class DataError(HwnasError):
    """A problem with the data, in one line. Raised in a DataLoader worker, it comes back to the
    main process as DataError(<the worker's traceback, as text>) (torch's re-raise of a worker's
    exception): its message is then the last line of that text again."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]  # "hwnas.search.checks.DataError: <message>"
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


@dataclass(frozen=True)
class DataShape:
    """What the network sees of the data. `classes` is None where it is known only once every
    label is read (a Dataset that does not list its labels): each item's label is then checked
    against the head as it is read. `source` names the data in messages."""

    channels: int
    resolution: int
    classes: int | None
    source: str = "the data"


def first_non_finite(images: torch.Tensor) -> int | None:
    """The index of the first image with a NaN or an infinity, or None (in chunks of CHUNK images)."""
    if not images.is_floating_point():
        return None
    for start in range(0, images.shape[0], CHUNK):
        bad = ~torch.isfinite(images[start:start + CHUNK].reshape(min(CHUNK, images.shape[0] - start), -1)).all(1)
        if bool(bad.any()):
            return start + int(bad.nonzero()[0, 0])
    return None


def check_images(images: Any, where: str) -> None:
    """Images (N, C, H, W) as one array or tensor: at least one, float or uint8, finite."""
    shape = tuple(images.shape)
    dtype = images.dtype
    if len(shape) != 4:
        raise DataError(f"{where}: images must have shape (N, C, H, W), got {shape}")
    if shape[0] == 0:
        raise DataError(f"{where}: no images (an array of shape {shape})")
    if shape[1] not in (1, 3) and shape[3] in (1, 3):
        raise DataError(f"{where}: images of shape {shape} look channels-last (N, H, W, C): transpose them to "
                        f"(N, C, H, W), e.g. numpy.transpose(images, (0, 3, 1, 2))")
    if isinstance(dtype, torch.dtype):
        floating, uint8 = dtype.is_floating_point, dtype == torch.uint8
    else:
        floating, uint8 = bool(np.issubdtype(dtype, np.floating)), dtype == np.uint8
    if not (floating or uint8):
        raise DataError(f"{where}: images must be float or uint8, got {dtype}")
    bad = first_non_finite(torch.as_tensor(images)) if floating else None
    if bad is not None:
        raise DataError(f"{where}: image {bad} has non-finite values (NaN or infinity): clean or drop it")


def check_labels(labels: Any, count: int, where: str) -> None:
    """Labels as one array or tensor: one integer per image, none negative."""
    shape = tuple(labels.shape)
    if shape != (count,):
        raise DataError(f"{where}: labels must have shape ({count},) (one per image), got {shape}")
    dtype = labels.dtype
    if isinstance(dtype, torch.dtype):
        integer = not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
    else:
        integer = np.issubdtype(dtype, np.integer)
    if not integer:
        raise DataError(f"{where}: labels must be integers (class indices 0..classes-1), got {dtype}")
    if count and int(labels.min()) < 0:
        raise DataError(f"{where}: labels must be class indices 0..classes-1, found {int(labels.min())} "
                        f"(label of image {int(torch.as_tensor(labels).argmin())})")


def item_name(dataset: Any, index: int) -> str:
    """The file of a Dataset's item where the Dataset lists its files, else 'item i of <Dataset>'."""
    outer = type(dataset).__name__
    while isinstance(dataset, Subset):
        index, dataset = int(dataset.indices[index]), dataset.dataset
    for attr in ("samples", "imgs"):  # torchvision's ImageFolder and DatasetFolder: (path, class)
        listed = getattr(dataset, attr, None)
        if isinstance(listed, (list, tuple)) and index < len(listed) and isinstance(listed[index], (list, tuple)):
            return str(listed[index][0])
    files = getattr(dataset, "files", None)
    if isinstance(files, (list, tuple)) and index < len(files):
        return str(files[index])
    return f"item {index} of the {outer}"


def label_value(label: Any) -> int | None:
    """A label as an int, or None when it is not an integer (a float, a bool, a tensor of several)."""
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.dtype.is_floating_point or label.dtype.is_complex or label.dtype == torch.bool:
            return None
        return int(label.item())
    if isinstance(label, (bool, np.bool_)):
        return None
    if isinstance(label, (int, np.integer)):
        return int(label)
    return None


def check_item(item: Any, name: str, shape: DataShape, classes: int) -> None:
    """One (image, label) item of a Dataset, against the data's shape and the head's classes."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"{name}: a Dataset item must be (image, label), got {type(item).__name__}")
    x, label = item
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: the image must be a tensor (C, H, W), got {type(x).__name__} (torchvision's "
                        f"ToTensor makes one)")
    want = (shape.channels, shape.resolution, shape.resolution)
    if tuple(x.shape) != want:
        raise DataError(f"{name}: image of shape {tuple(x.shape)}, the others are {want}: give every image the "
                        f"same channels and size")
    if not x.is_floating_point():
        raise DataError(f"{name}: the image must be a float tensor, got {x.dtype} (torchvision's ToTensor "
                        f"gives float)")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{name}: the image has non-finite values (NaN or infinity): clean or drop it")
    value = label_value(label)
    if value is None:
        raise DataError(f"{name}: the label must be an integer class index, got {label!r}")
    if not 0 <= value < classes:
        raise DataError(f"{name}: label {value} is not a class of the head (0..{classes - 1}): the table's "
                        f"macro-architecture ends in {classes} classes")


class CheckedItems(Dataset):  # type: ignore[type-arg]
    """A Dataset whose every item is checked as it is read (check_item)."""

    def __init__(self, dataset: Dataset, shape: DataShape, classes: int):  # type: ignore[type-arg]
        self.dataset, self.shape, self.classes = dataset, shape, classes
        for attr in ("labels", "targets"):  # kept visible: labels are read from them
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        try:
            item = self.dataset[i]
        except HwnasError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's Dataset failed: say where
            raise DataError(f"{item_name(self.dataset, i)}: reading it failed: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}") from exc
        check_item(item, item_name(self.dataset, i), self.shape, self.classes)
        return item
