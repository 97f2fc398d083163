"""Image folders of any size, read lazily: `dataset: "imagefolder:PATH"`.

    folder = ImageFolder.open("/data/imagenet")            # PATH/train and PATH/val, or one tree
    loader = folder.eval_loader(card.preprocess, batch_size=64, workers=4)
    for indices, images, labels in loader: ...             # decoded in the DataLoader's workers

Layout (torchvision's ImageFolder): PATH/<class>/<image>, class index = position of the class
name in sorted order. A folder with `train/` and `val/` subfolders is ImageNet-style: those are
the splits (the classes are train's). Any other folder is split by a seeded permutation: the
first `val_fraction` (default 10%) of it is the test split, the rest the training split.

Nothing holds more than a batch of pixels: the file list (a path and a label per image) is the
only per-image state, so evaluating 1.28 M images needs the memory of a few batches plus ~100 MB
of paths. Preprocessing is the card's (ponderscope.core.imaging.prepare: resize, crop, normalise, the same
code an uploaded image goes through); training adds timm's / the PyTorch ImageNet reference's
random-resized crop and horizontal flip, seeded by (seed, epoch, image) so that an image gets the
same crop whichever rank or worker decodes it (DDP and single-process runs see the same batch).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
MEAN_STD_SAMPLE = 1000  # training images the normalisation statistics are estimated from
CROP_FRACTION = 0.875   # eval: shorter side to input / 0.875, then the central input (256 -> 224)


def _list_classes(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders; expected {root}/<class name>/<image files>")
    files: list[tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        found = sorted(str(p) for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            empty.append(name)
        files.extend((path, label) for path in found)
    if empty:
        raise ValueError(f"class folder(s) {empty[:5]} in {root} hold no images ({', '.join(IMAGE_EXTENSIONS)})")
    return classes, files


@dataclass
class ImageFolder:
    """The file lists of a folder's two splits; no pixels."""

    root: Path
    classes: list[str]
    train: list[tuple[str, int]]
    test: list[tuple[str, int]]
    layout: str  # "train/val" or "split <fraction>"

    @classmethod
    def open(cls, root: str | os.PathLike, val_fraction: float = 0.1) -> "ImageFolder":
        root = Path(root)
        if (root / "train").is_dir() and (root / "val").is_dir():
            classes, train = _list_classes(root / "train")
            val_classes, test = _list_classes(root / "val")
            unknown = sorted(set(val_classes) - set(classes))
            if unknown:
                raise ValueError(f"{root}/val has classes that train lacks: {unknown[:5]}")
            index = {name: i for i, name in enumerate(classes)}  # val labels in train's numbering
            test = [(path, index[val_classes[label]]) for path, label in test]
            return cls(root, classes, train, test, "train/val")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), not {val_fraction}")
        classes, files = _list_classes(root)
        # The same seeded permutation as the in-memory loader of version 0.1, so a card's test
        # images stay the same ones.
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
        n_test = max(1, int(len(files) * val_fraction))
        return cls(root, classes, [files[i] for i in order[n_test:]], [files[i] for i in order[:n_test]],
                   f"split {val_fraction:g}")

    def input_size(self) -> list[int]:
        """The default input size of a model trained on this folder: the first training (else
        test) image's [H, W] for small images, else 224 x 224 (timm's and the ImageNet reference's
        default, for folders of photos of any size)."""
        from PIL import Image

        with Image.open((self.train or self.test)[0][0]) as image:
            return [image.height, image.width] if max(image.size) <= 224 else [224, 224]

    def use_class_names(self, names: Optional[list[str]]) -> None:
        """Label the images with the positions of their folders' names in `names` (a model's
        classes), when the folders are named after them: a folder with a subset of the classes,
        or in another order, is then scored against the right outputs. Folders named otherwise
        (ImageNet synsets against a card's readable names) keep their sorted positions, which
        must then cover the same number of classes. Refuses a partial match."""
        if not names:
            return
        known = {name: i for i, name in enumerate(names)}
        matched = [c for c in self.classes if c in known]
        if len(matched) == len(self.classes):
            order = [known[c] for c in self.classes]
            self.train = [(path, order[label]) for path, label in self.train]
            self.test = [(path, order[label]) for path, label in self.test]
            self.classes = list(names)
        elif matched:
            missing = [c for c in self.classes if c not in known]
            raise ValueError(f"{self.root}: class folder(s) {missing[:5]} are none of the model's classes ({', '.join(map(str, names[:5]))}, ...)")
        elif len(self.classes) != len(names):
            raise ValueError(f"{self.root} has {len(self.classes)} class folders, named unlike the model's {len(names)} classes: "
                             f"their sorted order cannot be its labels")


def read_image(path: str, channels: int):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def eval_preprocess(input_size: Sequence[int], channels: int, mean: list[float], std: list[float]) -> dict:
    """The card's preprocess for a model trained on a folder: ImageNet-style evaluation, the
    shorter side to input/0.875, then the central crop (what timm and the PyTorch reference do)."""
    height, width = int(input_size[0]), int(input_size[1])
    return {"input_size": [height, width], "channels": channels, "mean": mean, "std": std,
            "resize": "shorter_then_center_crop", "resize_shorter": int(math.floor(min(height, width) / CROP_FRACTION))}


class EvalImages(Dataset):
    """A split's images, prepared as the card says: item i -> (i, [C, H, W] float, label)."""

    def __init__(self, files: list[tuple[str, int]], preprocess: dict):
        self.files, self.preprocess = files, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def shown(self, index: int):
        """(the image the model sees as a PIL image, its input tensor [C, H, W])."""
        from ponderscope.core.imaging import prepare

        path, _ = self.files[index]
        x, shown = prepare(read_image(path, int(self.preprocess["channels"])), self.preprocess)
        return shown, x[0]

    def __getitem__(self, index: int):
        return index, self.shown(index)[1], self.files[index][1]


def random_resized_crop(image, size: Sequence[int], rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop: a crop of a random area fraction in `scale` and aspect
    ratio in `ratio` (log-uniform), ten tries, else the central crop of the nearest allowed
    ratio; resized to `size` [H, W] (bilinear)."""
    from PIL import Image

    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    return image.resize((int(size[1]), int(size[0])), Image.BILINEAR, box=(left, top, left + w, top + h))


class TrainImages(Dataset):
    """Training images with random-resized crop and flip. Item (index, epoch) -> ([C,H,W], label):
    the augmentation is drawn from a generator seeded by (seed, epoch, index) only."""

    def __init__(self, files: list[tuple[str, int]], preprocess: dict, seed: int, scale=(0.08, 1.0), flip: bool = True):
        self.files, self.preprocess, self.seed, self.scale, self.flip = files, preprocess, seed, tuple(scale), flip

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]):
        from PIL import Image

        from ponderscope.core.imaging import normalize

        index, epoch = item
        path, label = self.files[index]
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        image = random_resized_crop(read_image(path, int(self.preprocess["channels"])), self.preprocess["input_size"], rng, self.scale)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)[None] if array.ndim == 2 else torch.from_numpy(array).permute(2, 0, 1)
        return normalize(tensor, self.preprocess), label


class StepBatches(torch.utils.data.Sampler):
    """The batches of training steps start..steps-1, this rank's share of each.

    Every epoch is a DistributedSampler permutation (seed + epoch, drop_last) of the training
    files; step s is batch s mod (steps per epoch) of epoch s // (steps per epoch), `batch_size`
    images in all, `batch_size / world` per rank. DistributedSampler hands rank r the positions
    r, r + world, r + 2 world, ... of the permutation, so the ranks' step-s batches together are
    exactly the single-process run's step-s batch. Resuming at step s starts at that batch, no
    image decoded for the skipped ones."""

    def __init__(self, n_files: int, batch_size: int, start: int, steps: int, seed: int, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({world})")
        self.per_rank, self.start, self.steps = batch_size // world, start, steps
        self.per_epoch = n_files // batch_size
        if self.per_epoch < 1:
            raise ValueError(f"the training split has {n_files} images, fewer than one batch of {batch_size}")
        self.sampler = DistributedSampler(range(n_files), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start
        while step < self.steps:
            epoch, first = divmod(step, self.per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)
            for k in range(first, self.per_epoch):
                if step >= self.steps:
                    return
                yield [(i, epoch) for i in order[k * self.per_rank:(k + 1) * self.per_rank]]
                step += 1


def estimate_mean_std(files: list[tuple[str, int]], size: Sequence[int], channels: int, limit: int = MEAN_STD_SAMPLE) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixels in 0..1 over a seeded sample of `limit` training images
    (resized to `size`), the statistics a folder's model is normalised with."""
    from PIL import Image

    rng = random.Random(0)
    chosen = files if len(files) <= limit else rng.sample(files, limit)
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for path, _ in chosen:
        array = np.asarray(read_image(path, channels).resize((int(size[1]), int(size[0])), Image.BILINEAR), dtype=np.float64) / 255.0
        array = array.reshape(-1, channels)
        total += torch.from_numpy(array.sum(0))
        squares += torch.from_numpy((array ** 2).sum(0))
        count += len(array)
    mean = total / count
    std = (squares / count - mean ** 2).clamp(min=1e-12).sqrt()
    return [float(v) for v in mean], [float(v) for v in std]


def loader(dataset: Dataset, batch_sampler=None, batch_size: int = 64, workers: int = 2, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """A DataLoader decoding in `workers` processes (0: in this one)."""
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    options = dict(num_workers=workers, persistent_workers=False)
    if workers:
        options["prefetch_factor"] = 2
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **options)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **options)
