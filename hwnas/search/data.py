"""Data for a search: any PyTorch Dataset of (image, label); from files, an .npz or an image folder.
What the data must be, and what is refused or adapted: hwnas.search.checks.

The held-out split (for the fitness indicators and the evaluation of architectures) is carved
from the training data, as NSE does. Batches come from `ShardedBatches`: the order of an epoch
is a function of (seed, round, epoch) alone and each rank takes its own slice of every batch,
so that a resumed run sees the same batches and a data-parallel run of W ranks covers what one
process covers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hwnas.errors import HwnasError, require
from hwnas.files import os_error_message
from hwnas.progress import progress_bar
from hwnas.search.checks import (SAMPLE, CheckedItems, DataError, DataShape, check_images, check_labels,
                                 item_name)
from hwnas.spaces.macro import Macro

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GRAYSCALE_MODES = ("1", "L", "I;16", "I")  # Pillow modes read as one channel
NPZ_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip with members; an empty zip


class TensorImages(Dataset):  # type: ignore[type-arg]
    """Images (N, C, H, W) as float in [0, 1] or uint8, labels (N,) of integers, checked whole
    (hwnas.search.checks) and normalised per channel. `where` names them in messages; `files`
    (an image folder's) name each image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None,
                 where: str = "the images", files: Sequence[str] | None = None):
        check_images(images, where)
        check_labels(labels, images.shape[0], where)
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        self.images = images.float()
        self.labels = labels.long()
        self.classes = list(classes) if classes is not None else None  # names (an image folder's folders)
        self.source = where
        self.files = list(files) if files is not None else None
        mean = self.images.mean(dim=(0, 2, 3), keepdim=True)
        std = self.images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.images = (self.images - mean) / std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def load_npz(path: str | Path) -> TensorImages:
    """An .npz with `images` (N, C, H, W; float or uint8) and `labels` (N,; integers)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise HwnasError(f"cannot read data {path}: " + os_error_message(exc, path)) from None
    if magic not in NPZ_MAGIC:
        what = ("it is empty" if not magic else "it is a single .npy array" if magic.startswith(b"\x93NUM")
                else "it is not a zip file")
        raise DataError(f"{path} is not an .npz ({what}): write one with numpy.savez(path, images=..., labels=...)")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("images", "labels") if k not in f.files]
            if missing:
                raise DataError(f"{path} has no array {' or '.join(missing)} (it has: {', '.join(f.files) or 'none'}); "
                                f"expected 'images' (N, C, H, W) and 'labels' (N,)")
            images, labels = f["images"], f["labels"]
    except HwnasError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken or truncated zip, a bad member, pickled objects
        raise DataError(f"cannot read {path} as a NumPy .npz: {type(exc).__name__}: {exc}") from None
    if images.ndim != 4:
        raise DataError(f"{path}: images must have shape (N, C, H, W), got {images.shape}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: images must be float or uint8, got {images.dtype}")
    check_labels(labels, images.shape[0], str(path))  # before the cast to int64
    return TensorImages(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)),
                        where=str(path))


def load_image_folder(root: str | Path, progress: bool = False) -> TensorImages:
    """ROOT/<class>/<image> (the class-per-folder layout); classes in sorted order, images read
    with Pillow, all of one size, RGB unless every image is grayscale. One pass over the files'
    headers (Pillow reads no pixels until asked: the size and mode of every file, checked before
    any is decoded), then one decoding each into the array."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class folders: expected ROOT/<class>/<image files>")
    image_mod = require("PIL.Image", "images", "Reading an image folder")
    listed = {name: sorted(f for f in (root / name).iterdir() if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_SUFFIXES) for name in classes}
    files = [(f, c) for c, name in enumerate(classes) for f in listed[name]]
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    empty = [name for name in classes if not listed[name]]
    if empty:
        raise DataError(f"{root / empty[0]}: a class folder without images ({len(empty)} of {len(classes)} have "
                        f"none): add its images or remove the folder")
    size: tuple[int, int] | None = None
    grayscale = True
    for f, _ in files:
        try:
            with image_mod.open(f) as im:
                dims, mode = im.size, im.mode
        except Exception as exc:  # noqa: BLE001 - Pillow's errors for what is not an image vary
            raise DataError(f"{f} is not an image Pillow can read: {exc}") from None
        if size is None:
            size = dims
        elif dims != size:
            raise DataError(f"{f} is {dims[0]}x{dims[1]}, {files[0][0]} is {size[0]}x{size[1]}: the images must be "
                            f"of one size; resize them")
        grayscale = grayscale and mode in GRAYSCALE_MODES
    assert size is not None
    mode = "L" if grayscale else "RGB"
    pixels = np.empty((len(files), 1 if grayscale else 3, size[1], size[0]), np.uint8)
    with progress_bar(len(files), f"reading {root}", unit="image", enabled=progress) as bar:
        for i, (f, _) in enumerate(files):
            try:
                with image_mod.open(f) as im:
                    array = np.asarray(im.convert(mode))
            except Exception as exc:  # noqa: BLE001 - a truncated or corrupt file
                raise DataError(f"cannot read image {f}: {exc}") from None
            pixels[i] = array[None] if grayscale else array.transpose(2, 0, 1)
            bar.update(1)
    labels = torch.tensor([c for _, c in files])
    return TensorImages(torch.from_numpy(pixels), labels, classes, where=str(root), files=[str(f) for f, _ in files])


def load_data(path: str | Path, progress: bool = False) -> TensorImages:
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p, progress)
    if p.suffix == ".npz":
        return load_npz(p)
    if not p.exists():
        raise HwnasError(f"no such data file or folder: {p}")
    raise HwnasError(f"{p}: give an image folder (one sub-folder per class) or an .npz with images and labels")


def listed_labels(dataset: Any) -> torch.Tensor | None:
    """The labels a Dataset lists (`labels`, or torchvision's `targets`), through Subsets; None
    when it lists none (its items must be read for them)."""
    if isinstance(dataset, Subset):
        inner = listed_labels(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    return None if labels is None else torch.as_tensor(labels)


def _item(dataset: Any, i: int) -> Any:
    try:
        return dataset[i]
    except HwnasError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's Dataset failed: say where
        raise DataError(f"{item_name(dataset, i)}: reading it failed: {type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:200]}") from exc


def data_shape(dataset: Dataset) -> DataShape:  # type: ignore[type-arg]
    """Channels and resolution of a dataset (its first item), and its number of classes where it
    lists its labels (checked: integers, none negative, one per item)."""
    source = getattr(dataset, "source", None) or f"the {type(dataset).__name__}"
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DataError(f"{source}: no images (the dataset is empty)")
    item = _item(dataset, 0)
    x = item[0] if isinstance(item, (tuple, list)) and len(item) == 2 else None
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise DataError(f"{item_name(dataset, 0)}: dataset items must be (image tensor (C, H, W), label), got "
                        f"{type(x if x is not None else item).__name__} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] != x.shape[2]:
        raise DataError(f"{source}: images must be square, got {x.shape[1]}x{x.shape[2]}: crop or resize them")
    labels = listed_labels(dataset)
    classes = None
    if labels is not None:
        check_labels(labels, n, source)
        named = getattr(dataset, "classes", None)
        classes = len(named) if isinstance(named, (list, tuple)) else int(labels.max()) + 1
    return DataShape(int(x.shape[0]), int(x.shape[1]), classes, source)


def check_against_macro(shape: DataShape, macro: Macro) -> None:
    """The table priced the network of its macro-architecture: the data must fit it."""
    fix = (f"build a table for a macro-architecture with \"input\": {shape.resolution} and \"classes\": "
           f"{shape.classes or macro.classes} (hwnas table build --macro FILE)")
    if shape.channels not in (1, 3):
        raise DataError(f"{shape.source}: images must have 1 or 3 channels (the stem takes RGB), got {shape.channels}")
    if shape.resolution != macro.input:
        raise DataError(f"{shape.source}: the images are {shape.resolution}x{shape.resolution}, the table's "
                        f"macro-architecture {macro.name} takes {macro.input}x{macro.input}: resize the images or {fix}")
    if shape.classes is not None and shape.classes != macro.classes:
        raise DataError(f"{shape.source}: the data have {shape.classes} classes, the table's macro-architecture "
                        f"{macro.name} ends in {macro.classes}: {fix}")


def checked_data(data: Any, macro: Macro) -> tuple[Dataset, DataShape]:  # type: ignore[type-arg]
    """A search's data, checked (hwnas.search.checks) before the run starts: in-memory images were
    checked whole when made; any other Dataset's labels (where it lists them) and a sample of its
    items now, and every item as its batch is read (the Dataset returned does that)."""
    dataset = as_dataset(data)
    shape = data_shape(dataset)
    check_against_macro(shape, macro)
    shape = replace(shape, classes=macro.classes)  # every label is checked against the head
    if _random_free(dataset):
        return dataset, shape
    checked = CheckedItems(dataset, shape, macro.classes)
    n = len(checked)
    sample = SeededItems(checked, 0)  # leaves the global random state as it was
    for i in sorted({round(k * (n - 1) / (SAMPLE - 1)) for k in range(SAMPLE)}):
        sample[i]
    return checked, shape


def check_sizes(train: int, held: int, batch: int, world: int) -> None:
    """Before a run starts: its batch splits over the processes and fits in the training split,
    and the held-out split gives every process a share of theta's batches."""
    check_split(batch, world)
    if batch > train:
        raise HwnasError(f"the batch ({batch}) is larger than the training data ({train} images, once the held-out "
                         f"split is carved out): lower --batch, or give more data")
    if held < world:
        raise HwnasError(f"the held-out split has {held} images, fewer than the {world} processes: give more data or "
                         f"a larger held_out fraction")


def split_held_out(dataset: Dataset, fraction: float, seed: int) -> tuple[Subset, Subset]:  # type: ignore[type-arg]
    """(train, held-out): a seeded random `fraction` of the items is held out."""
    n = len(dataset)  # type: ignore[arg-type]
    held = max(1, int(round(n * fraction)))
    if held >= n:
        raise HwnasError(f"{n} images are too few to hold out {fraction:.0%} and still train")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[held:]), Subset(dataset, order[:held])


def step_seed(*parts: int) -> int:
    """One 63-bit seed from a tuple of integers (seed, round, step, ...), stable across runs."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def check_split(batch: int, world: int) -> None:
    """A data-parallel run's batch is global: each of the `world` processes takes an equal share."""
    if batch % world:
        raise HwnasError(f"the batch ({batch}) does not split evenly over {world} processes: make it a multiple "
                         f"of {world} (the batch is the global one, over all processes)")


class ShardedBatches:
    """Index batches of one epoch for one rank: torch's DistributedSampler shuffles the epoch
    (seeded by (seed, epoch)) and deals rank r of W the items r, r + W, ...; its consecutive runs
    of batch / W items are the rank's shares of the global batches of `batch` items (the last
    partial one dropped). So the W ranks' b-th batches together are exactly the b-th batch of one
    process, and an epoch's order depends on (seed, epoch) alone: a resumed run repeats it. World
    size 1 is the plain single-process case."""

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1):
        if batch > n:
            raise HwnasError(f"the batch ({batch}) is larger than the data ({n} images): lower --batch")
        check_split(batch, world)
        from torch.utils.data import DistributedSampler

        self.n, self.batch, self.share, self.seed = n, batch, batch // world, seed
        items: Any = range(n)  # the sampler needs only the length
        self.sampler: DistributedSampler[int] = DistributedSampler(items, num_replicas=world, rank=rank, shuffle=True,
                                                                   seed=seed, drop_last=True)

    def __len__(self) -> int:
        return self.n // self.batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[int]]:
        self.sampler.set_epoch(epoch)
        mine = list(self.sampler)
        for b in range(start, len(self)):
            yield mine[b * self.share:(b + 1) * self.share]


def stack(items: Sequence[tuple[Any, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of (image, label) items; single-channel images repeated to the stem's three."""
    x = torch.stack([it[0] for it in items])
    y = torch.as_tensor([int(it[1]) for it in items])
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x, y


class SeededItems(Dataset):  # type: ignore[type-arg]
    """A dataset whose item i is read with torch's and Python's random state (what torchvision's
    transforms draw from) seeded from (seed, i), then restored: random transforms give the same
    image whatever the number of DataLoader workers or processes, and after a resume mid-epoch.
    NumPy's global random state is not seeded (saving and restoring it costs 50 us an item)."""

    def __init__(self, dataset: Dataset, seed: int):  # type: ignore[type-arg]
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item_seed = step_seed(self.seed, i)
        cpu = torch.default_generator  # torch.manual_seed would also seed every GPU's: 60 us
        saved, python = cpu.get_state(), random.getstate()
        cpu.manual_seed(item_seed)
        random.seed(item_seed)
        try:
            return self.dataset[i]
        finally:
            cpu.set_state(saved)
            random.setstate(python)


def _random_free(dataset: Any) -> bool:
    """In-memory images (TensorImages, or subsets of them) draw nothing at random."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImages)


def loader(dataset: Dataset, batches: Sequence[Sequence[int]], workers: int, seed: int,  # type: ignore[type-arg]
           pin: bool = False, persistent: bool = False) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    """torch's DataLoader over the given index batches: `workers` processes read and prefetch them
    (0: read in this process). Each item's random draws are seeded by (seed, item) (SeededItems),
    and the loader's own generator leaves the global random state alone."""
    items = dataset if _random_free(dataset) else SeededItems(dataset, seed)
    return torch.utils.data.DataLoader(items, batch_sampler=[list(b) for b in batches],
                                       num_workers=workers, collate_fn=stack, pin_memory=pin,
                                       persistent_workers=persistent and workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


class BatchStream:
    """The batches of a ShardedBatches in step order (step i: batch i % len of epoch i // len),
    through a DataLoader per epoch; asked for another step than the next (a resumed run), it
    starts a DataLoader at that step's place in its epoch."""

    def __init__(self, batches: ShardedBatches, dataset: Dataset, workers: int = 0,  # type: ignore[type-arg]
                 pin: bool = False):
        self.batches, self.dataset, self.workers, self.pin = batches, dataset, workers, pin
        self.next_step = -1
        self.epoch_end = 0
        self.iterator: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.iterator is None or step != self.next_step:
            epoch, start = divmod(step, len(self.batches))
            self.iterator = iter(loader(self.dataset, list(self.batches.epoch(epoch, start)), self.workers,
                                        step_seed(self.batches.seed, epoch), self.pin))
            self.epoch_end = (epoch + 1) * len(self.batches)
        try:
            batch = next(self.iterator)
        except BaseException:  # a bad item (hwnas.search.checks), the user's Dataset failing, Ctrl-C
            self._stop_workers()
            raise
        self.next_step = step + 1
        if self.next_step == self.epoch_end:
            self.iterator = None  # the epoch's loader (and its workers) can go
        return batch


    def _stop_workers(self) -> None:
        """The loader's workers end now: the error's traceback holds the loader's iterator, and torch's
        shutdown of it at a later garbage collection waits 5 s for each worker."""
        iterator, self.iterator = self.iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's own clean-up (absent: no workers)
        if shutdown is not None:
            shutdown()


def fixed_batches(dataset: Dataset, count: int, batch: int, seed: int,  # type: ignore[type-arg]
                  workers: int = 0) -> torch.utils.data.DataLoader:  # type: ignore[type-arg]
    """`count` items (all when count is 0 or more than there are), drawn with `seed`, in batches:
    the same batches every time it is iterated (its workers kept between passes)."""
    n = len(dataset)  # type: ignore[arg-type]
    count = n if count <= 0 else min(count, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:count].tolist()
    return loader(dataset, [order[b:b + batch] for b in range(0, count, batch)], workers, seed, persistent=True)


def as_dataset(data: Any) -> Dataset:  # type: ignore[type-arg]
    """A Dataset from a Dataset or a DataLoader (its dataset)."""
    if isinstance(data, torch.utils.data.DataLoader):
        return data.dataset
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return data  # type: ignore[no-any-return]
    raise HwnasError(f"expected a torch Dataset or DataLoader, got {type(data).__name__}")
