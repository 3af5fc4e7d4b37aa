"""Data for a search: any PyTorch Dataset of (image, label); from files, an .npz or an image folder.

The held-out split (for the fitness indicators and the evaluation of architectures) is carved
from the training data, as NSE does. Batches come from `ShardedBatches`: the order of an epoch
is a function of (seed, round, epoch) alone and each rank takes its own slice of every batch,
so that a resumed run sees the same batches and a data-parallel run of W ranks covers what one
process covers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from hwnas.errors import HwnasError, require
from hwnas.spaces.macro import Macro

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class TensorImages(Dataset):  # type: ignore[type-arg]
    """Images (N, C, H, W) as float in [0, 1] or uint8, labels (N,); normalised per channel on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str] | None = None):
        if images.ndim != 4:
            raise HwnasError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise HwnasError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        elif not images.is_floating_point():
            raise HwnasError(f"images must be float or uint8, got {images.dtype}")
        self.images = images.float()
        self.labels = labels.long()
        self.classes = list(classes) if classes is not None else [str(i) for i in range(int(labels.max()) + 1)]
        mean = self.images.mean(dim=(0, 2, 3), keepdim=True)
        std = self.images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.images = (self.images - mean) / std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def load_npz(path: str | Path) -> TensorImages:
    """An .npz with `images` (N, C, H, W; float or uint8) and `labels` (N,; integers)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("images", "labels") if k not in f.files]
            if missing:
                raise HwnasError(f"{path} has no array {' or '.join(missing)} (it has: {', '.join(f.files)}); "
                                 f"expected 'images' (N, C, H, W) and 'labels' (N,)")
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError) as exc:
        raise HwnasError(f"cannot read {path} as a NumPy .npz: {exc}") from None
    if not np.issubdtype(labels.dtype, np.integer):
        raise HwnasError(f"{path}: labels must be integers, got {labels.dtype}")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise HwnasError(f"{path}: images must be float or uint8, got {images.dtype}")
    if labels.size and labels.min() < 0:
        raise HwnasError(f"{path}: labels must be 0..classes-1, found {labels.min()}")
    return TensorImages(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def load_image_folder(root: str | Path) -> TensorImages:
    """ROOT/<class>/<image> (the class-per-folder layout); classes in sorted order, images read
    with Pillow, all of one size, RGB unless every image is grayscale."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise HwnasError(f"{root} has no class folders: expected ROOT/<class>/<image files>")
    image_mod = require("PIL.Image", "images", "Reading an image folder")
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise HwnasError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    opened = []
    for f, _ in files:
        try:
            with image_mod.open(f) as im:
                opened.append(im.convert("L") if im.mode in ("1", "L", "I;16", "I") else im.convert("RGB"))
        except OSError as exc:
            raise HwnasError(f"cannot read image {f}: {exc}") from None
    mode = "L" if all(im.mode == "L" for im in opened) else "RGB"
    arrays = [np.asarray(im.convert(mode)) for im in opened]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        raise HwnasError(f"{root}: images of several sizes {sorted(sizes)[:4]}; resize them to one size")
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)
    labels = torch.tensor([c for _, c in files])
    return TensorImages(torch.from_numpy(np.ascontiguousarray(stacked)), labels, classes)


def load_data(path: str | Path) -> TensorImages:
    p = Path(path)
    if p.is_dir():
        return load_image_folder(p)
    if p.suffix == ".npz":
        return load_npz(p)
    if not p.exists():
        raise HwnasError(f"no such data file or folder: {p}")
    raise HwnasError(f"{p}: give an image folder (one sub-folder per class) or an .npz with images and labels")


@dataclass(frozen=True)
class DataShape:
    channels: int
    resolution: int
    classes: int


def data_shape(dataset: Dataset) -> DataShape:  # type: ignore[type-arg]
    """Channels, resolution and number of classes of a dataset (its first item; labels scanned
    from `.labels` or `.targets` when present, else from the items)."""
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise HwnasError("the dataset is empty")
    x, _ = dataset[0]
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise HwnasError(f"dataset items must be (image tensor (C, H, W), label), got {type(x).__name__} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if x.shape[1] != x.shape[2]:
        raise HwnasError(f"images must be square, got {x.shape[1]}x{x.shape[2]}: crop or resize them")
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = getattr(dataset, "targets", None)
    if labels is None:
        labels = [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]
    classes = int(torch.as_tensor(labels).max()) + 1
    return DataShape(int(x.shape[0]), int(x.shape[1]), classes)


def check_against_macro(shape: DataShape, macro: Macro) -> None:
    """The table priced the network of its macro-architecture: the data must fit it."""
    fix = (f"build a table for a macro-architecture with \"input\": {shape.resolution} and \"classes\": "
           f"{shape.classes} (hwnas table build --macro FILE)")
    if shape.resolution != macro.input:
        raise HwnasError(f"the data's images are {shape.resolution}x{shape.resolution}, the table's macro-architecture "
                         f"{macro.name} takes {macro.input}x{macro.input}: resize the images or {fix}")
    if shape.classes != macro.classes:
        raise HwnasError(f"the data have {shape.classes} classes, the table's macro-architecture {macro.name} "
                         f"ends in {macro.classes}: {fix}")
    if shape.channels not in (1, 3):
        raise HwnasError(f"images must have 1 or 3 channels (the stem takes RGB), got {shape.channels}")


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
            raise HwnasError(f"the batch ({batch}) is larger than the data ({n} images): lower batch in the settings "
                             f"(--config)")
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
        batch = next(self.iterator)
        self.next_step = step + 1
        if self.next_step == self.epoch_end:
            self.iterator = None  # the epoch's loader (and its workers) can go
        return batch


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
