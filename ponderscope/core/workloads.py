"""What a model is trained and evaluated on: data, batches, loss, metrics. One class per task.

A workload knows its data and how to score a model's `Trace` on it; `train.py` runs the loop and
`evaluate.py` writes the metrics into the card. Evaluation sets are fixed (seeded), so the
numbers in a card are reproducible from the bundled weights.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ponderscope.models.checkpoint import Card, has_image_test_set
from ponderscope.models.contract import token_layer_labels

from . import data, tasks
from .statistics import mean_or_nan

EVAL_SLICE = 500  # every card also records the metrics on the first 500 evaluation examples


def make_workload(task: dict, dataset: str, device: torch.device, options: Optional[dict] = None, test_only: bool = False):
    """The data of a task. test_only: the test split alone, normalised with options["preprocess"]
    (a trained model's card), without building the training split."""
    options = options or {}
    name = task["name"]
    if name == "classify" and dataset.startswith("imagefolder:"):
        return FolderClassification(dataset, device, options, test_only)
    if name == "classify":
        return ImageClassification(dataset, device, options, test_only)
    if name == "parity":
        return Parity(int(task.get("bits", 16)), device)
    if name == "bytes-lm":
        return BytesLM(dataset, device, int(options.get("seq_len", 100)))
    raise ValueError(f"unknown task {name!r} (known: classify, parity, bytes-lm)")


def task_loss_of(model, trace, targets: torch.Tensor) -> torch.Tensor:
    """The task loss: the model's own `task_loss(trace, targets)` where it defines one (PonderNet's
    expected loss over halting steps, say), else the cross-entropy of trace.logits."""
    if hasattr(model, "task_loss"):
        return model.task_loss(trace, targets)
    return F.cross_entropy(trace.logits, targets)


def checkpoint_test_data(card: Card, device: str | torch.device = "cpu"):
    """A trained model's test data, as its card says (data set, data options, normalisation):
    the one way the server, `ponderscope eval` and the benches get it."""
    options = {**card.data_options, "preprocess": card.preprocess, "classes": card.classes}
    return make_workload(card.data["task"], card.dataset, torch.device(device), options, test_only=True)


CORPUS_STATISTICS = ("per_char_class", "steps_histogram")  # what a byte LM's corpus panel reads from its card (metrics.test)


def card_corpus_statistics(card: dict) -> bool:
    """Whether a byte LM's card carries its held-out statistics (`ponderscope eval` writes them)."""
    test = (card.get("metrics") or {}).get("test") or {}
    return all(key in test for key in CORPUS_STATISTICS)


def no_test_set(card: dict) -> Optional[str]:
    """Why the card's model has no test set the project can load (None if it has one), in a
    clause that follows "model X comes without a test set here: ": an image model of a data set other than
    the project's (e.g. imported from the authors' checkpoints) or of none; a byte LM whose card
    names no text corpus the project has and carries no held-out statistics. (Parity vectors are
    drawn, never missing.)"""
    task, dataset = card["task"]["name"], card.get("dataset")  # (cards are checked when they load)
    if task == "bytes-lm":
        if dataset in data.TEXT_CORPORA or card_corpus_statistics(card):
            return None
        if dataset is None:
            return ('its card names no text corpus ("dataset": null) and carries no held-out statistics '
                    f"(metrics.test.{' and .'.join(CORPUS_STATISTICS)}, written by ponderscope eval)")
        return f"no text corpus {dataset!r} here (known: {', '.join(sorted(data.TEXT_CORPORA))}) and no held-out statistics in its card"
    if task != "classify" or has_image_test_set(card):
        return None
    if dataset is None:
        return 'its card names no data set ("dataset": null)'
    source = (card.get("source") or {}).get("format")
    return f"no test set of {dataset!r} here{f' (imported from {source})' if source else ''}"


def train_batches(workload, config: dict, start: int, rank: int = 0, world: int = 1):
    """The batches of steps start..steps-1, this rank's share of each: `world` processes together
    see exactly the global batch of `config["batch_size"]` a single process would.

    A workload with its own stream (an image folder, decoded by DataLoader workers) yields them;
    the others make the global batch of step s from a generator seeded by (seed, s) alone, so a
    resumed run sees the same data as an uninterrupted one, and every rank keeps its slice."""
    if hasattr(workload, "train_batches"):
        yield from workload.train_batches(config, start, rank, world)
        return
    batch_size = config["batch_size"]
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the number of processes ({world})")
    share = slice(rank * batch_size // world, (rank + 1) * batch_size // world)
    for step in range(start, config["steps"]):
        generator = torch.Generator().manual_seed(config["seed"] * 1_000_003 + step)
        yield tuple(part[share] for part in workload.train_batch(generator, batch_size))


class ImageClassification:
    """Fashion-MNIST, MNIST digits or cluttered MNIST, held in memory as uint8 tensors."""

    def __init__(self, dataset: str, device: torch.device, options: dict, test_only: bool = False):
        self.dataset, self.device = dataset, device
        self.flip = bool(options.get("flip", dataset == "fashion-mnist"))
        self.pad = int(options.get("pad", 2))
        self.test_boxes = None
        if dataset == "fashion-mnist":
            test_x, test_y = data.load_fashion_mnist("test")
            train_x, train_y = (test_x[:0], test_y[:0]) if test_only else data.load_fashion_mnist("train")
            self.classes = list(data.FASHION_MNIST_CLASSES)
        elif dataset == "mnist":
            test_x, test_y = data.mnist_split("test")
            train_x, train_y = (test_x[:0], test_y[:0]) if test_only else data.mnist_split("train")
            self.classes = [str(d) for d in range(10)]
        elif dataset == "cluttered-mnist":
            digits_test, labels_test = data.mnist_split("test")
            test_x, test_y, self.test_boxes = data.make_cluttered_mnist(digits_test, labels_test, 2000, seed=2)
            if test_only:
                train_x, train_y = test_x[:0], test_y[:0]
            else:
                digits_train, labels_train = data.mnist_split("train")
                n_train = int(options.get("cluttered_train_size", 48000))
                train_x, train_y, _ = data.make_cluttered_mnist(digits_train, labels_train, n_train, seed=1)
            self.classes = [str(d) for d in range(10)]
        else:
            raise ValueError(f"unknown image dataset {dataset!r}")
        if test_x.dim() == 3:  # grayscale [N, H, W] -> [N, 1, H, W]
            train_x, test_x = train_x.unsqueeze(1), test_x.unsqueeze(1)
        if test_only:
            self.mean, self.std = list(options["preprocess"]["mean"]), list(options["preprocess"]["std"])
        else:
            scaled = train_x.float() / 255.0
            self.mean = [float(v) for v in scaled.mean(dim=(0, 2, 3))]
            self.std = [float(v) for v in scaled.std(dim=(0, 2, 3))]
        # holdout: the last N training images are not trained on; a model that chooses a setting
        # after training (an early-exit threshold) chooses it on them, never on the test set
        holdout = 0 if test_only else int(options.get("holdout", 0))  # (test_only: no training images at all)
        if not 0 <= holdout < max(1, len(train_y)):
            raise ValueError(f"holdout must be between 0 and the {len(train_y)} training images, not {holdout}")
        self.holdout_x, self.holdout_y = train_x[len(train_y) - holdout:].to(device), train_y[len(train_y) - holdout:].to(device)
        train_x, train_y = train_x[: len(train_y) - holdout], train_y[: len(train_y) - holdout]
        self.train_x, self.train_y = train_x.to(device), train_y.to(device)
        self.test_x, self.test_y = test_x.to(device), test_y.to(device)

    @property
    def card_fields(self) -> dict:
        return {
            "task": {"name": "classify"},
            "dataset": self.dataset,
            "classes": self.classes,
            "preprocess": {
                "input_size": list(self.test_x.shape[-2:]),
                "channels": int(self.test_x.shape[1]),
                "mean": self.mean,
                "std": self.std,
            },
        }

    def model_kwargs(self) -> dict:
        return {"num_classes": len(self.classes), "in_channels": int(self.test_x.shape[1])}

    @property
    def n_test(self) -> int:
        return len(self.test_y)

    def sample_image(self, index: int):
        """Test image `index` as a Pillow image, as stored (what an analysis prepares)."""
        from ponderscope.core.imaging import tensor_to_image

        return tensor_to_image(self.test_x[index])

    thumbnail = sample_image  # the image at the model's input size: the same thing here

    def test_label(self, index: int) -> int:
        return int(self.test_y[index])

    def test_example(self, index: int):
        """Test image `index` -> (Pillow image, label, digit box or None); IndexError out of range."""
        if not 0 <= index < self.n_test:
            raise IndexError(f"sample {index} is out of range: the test set has {self.n_test} images (0..{self.n_test - 1})")
        box = None if self.test_boxes is None else [int(v) for v in self.test_boxes[index]]
        return self.sample_image(index), self.test_label(index), box

    def holdout_batches(self, batch_size: int = 500):
        """(normalised images, labels) over the held-out training images (data option holdout)."""
        for start in range(0, len(self.holdout_y), batch_size):
            yield self.normalize(self.holdout_x[start : start + batch_size]), self.holdout_y[start : start + batch_size]

    def test_batches(self, batch_size: int, limit: Optional[int] = None, workers: Optional[int] = None, indices=None):
        """(indices, normalised images, labels) over the first `limit` test images (all: None),
        or over `indices` (a range)."""
        if indices is None:
            indices = range(self.n_test if limit is None else min(limit, self.n_test))
        for start in range(indices.start, indices.stop, batch_size):
            end = min(indices.stop, start + batch_size)
            yield torch.arange(start, end), self.normalize(self.test_x[start:end]), self.test_y[start:end]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=images_uint8.device)[None, :, None, None]
        std = torch.tensor(self.std, device=images_uint8.device)[None, :, None, None]
        return (images_uint8.float() / 255.0 - mean) / std

    def train_batch(self, generator: torch.Generator, batch_size: int):
        index = torch.randint(len(self.train_y), (batch_size,), generator=generator)
        images = self.normalize(self.train_x[index.to(self.device)])
        if self.pad:  # random translation by up to `pad` pixels (pad with the background, crop)
            h, w = images.shape[-2:]
            padded = F.pad(images, [self.pad] * 4, value=float(images.amin()))
            dy, dx = torch.randint(0, 2 * self.pad + 1, (2,), generator=generator).tolist()
            images = padded[..., dy : dy + h, dx : dx + w]
        if self.flip:
            flip = (torch.rand(batch_size, generator=generator) < 0.5).to(self.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images, self.train_y[index.to(self.device)]

    def loss(self, model, batch, hp: dict):
        images, labels = batch
        trace = model.trace(images)
        task_loss = task_loss_of(model, trace, labels)
        adaptive = model.adaptive_loss(trace, **hp) if hasattr(model, "adaptive_loss") else task_loss.new_zeros(())
        stats = {
            "loss": task_loss.detach(),
            "acc": (trace.logits.argmax(-1) == labels).float().mean(),
            "flops": trace.flops.mean() / trace.dense_flops,
        }
        if trace.blocks:
            stats["ponder"] = trace.mean_ponder().detach().mean()
        return task_loss + adaptive, stats

    @torch.no_grad()
    def evaluate(self, model, limit: Optional[int] = None, batch_size: int = 250, per_class_accuracy: bool = False) -> dict:
        """The card's metrics of `model` on the first `limit` test images (all: None), by the one
        statistics pass (ponderscope.core.statistics); per_class_accuracy adds the accuracy of each
        class (what-if studies: which classes break)."""
        from .statistics import image_records, test_metrics  # noqa: the one statistics pass

        device = next(model.parameters()).device
        records = image_records(lambda images: model.trace(images.to(device)), self.test_batches(batch_size, limit), boxes=self.test_boxes)
        return test_metrics(records, len(self.classes), per_class_accuracy)


class FolderClassification(ImageClassification):
    """A user's image folder (`imagefolder:PATH`, ponderscope/core/imagefolder.py), read a batch at a time
    by DataLoader workers: no split is ever held in memory.

    data_options: channels (1 or 3; default 1), input_size (default: the first image's size),
    crop_scale ([0.08, 1]: the random-resized crop's area range), flip (default true),
    val_fraction (test share of a folder without train/ and val/, default 0.1), workers
    (decoding processes per rank; default min(4, CPUs))."""

    def __init__(self, dataset: str, device: torch.device, options: dict, test_only: bool = False):
        from .imagefolder import ImageFolder, estimate_mean_std, eval_preprocess

        self.dataset, self.device = dataset, device
        if int(options.get("holdout", 0)) and not test_only:  # its split already has a validation part: that is the place
            raise ValueError("data option holdout is for the in-memory data sets; an image folder holds out val_fraction of its images already")
        self.folder = ImageFolder.open(dataset.split(":", 1)[1], float(options.get("val_fraction", 0.1)))
        if test_only:  # a trained model's folder: labels are its classes' positions
            self.folder.use_class_names(options.get("classes"))
        self.classes = self.folder.classes
        self.test_boxes = None
        self.flip = bool(options.get("flip", True))
        self.crop_scale = tuple(options.get("crop_scale", (0.08, 1.0)))
        self.workers = int(options.get("workers", min(4, os.cpu_count() or 1)))
        if test_only:  # a trained model: its card's preprocessing, whatever it is
            self.preprocess = dict(options["preprocess"])
        else:
            channels = int(options.get("channels", 1))
            size = options.get("input_size") or self.folder.input_size()
            size = [int(size), int(size)] if isinstance(size, (int, float)) else [int(v) for v in size]
            mean, std = estimate_mean_std(self.folder.train, size, channels)
            self.preprocess = eval_preprocess(size, channels, mean, std)
        self.mean, self.std = list(self.preprocess.get("mean", [])), list(self.preprocess.get("std", []))
        self.channels = int(self.preprocess["channels"])

    @property
    def card_fields(self) -> dict:
        return {"task": {"name": "classify"}, "dataset": self.dataset, "classes": self.classes, "preprocess": self.preprocess,
                "data_layout": {"layout": self.folder.layout, "train_images": len(self.folder.train), "test_images": len(self.folder.test)}}

    def model_kwargs(self) -> dict:
        return {"num_classes": len(self.classes), "in_channels": self.channels}

    @property
    def n_test(self) -> int:
        return len(self.folder.test)

    def _eval_images(self):
        from .imagefolder import EvalImages

        return EvalImages(self.folder.test, self.preprocess)

    def sample_image(self, index: int):
        from .imagefolder import read_image

        return read_image(self.folder.test[index][0], self.channels)

    def thumbnail(self, index: int):
        return self._eval_images().shown(index)[0]

    def test_label(self, index: int) -> int:
        return self.folder.test[index][1]

    def holdout_batches(self, batch_size: int = 500):
        """(normalised images, labels) over the held-out training images (data option holdout)."""
        for start in range(0, len(self.holdout_y), batch_size):
            yield self.normalize(self.holdout_x[start : start + batch_size]), self.holdout_y[start : start + batch_size]

    def test_batches(self, batch_size: int, limit: Optional[int] = None, workers: Optional[int] = None, indices=None):
        from .imagefolder import loader

        if indices is None:
            indices = range(self.n_test if limit is None else min(limit, self.n_test))
        workers = self.workers if workers is None else workers
        for index, images, labels in loader(self._eval_images(), batch_size=batch_size, workers=workers, indices=indices):
            yield index, images, labels

    def train_batches(self, config: dict, start: int, rank: int = 0, world: int = 1):
        from .imagefolder import StepBatches, TrainImages, loader

        images = TrainImages(self.folder.train, self.preprocess, config["seed"], self.crop_scale, self.flip)
        batches = StepBatches(len(self.folder.train), config["batch_size"], start, config["steps"], config["seed"], rank, world)
        for x, labels in loader(images, batch_sampler=batches, workers=self.workers):
            yield x.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)


class Parity:
    """Graves's parity task: one input step, a vector of `bits` entries in {-1, 0, 1}."""

    EVAL_EXAMPLES = 10000

    def __init__(self, bits: int, device: torch.device):
        self.bits, self.device = bits, device
        x, y = tasks.parity_batch(self.EVAL_EXAMPLES, bits, torch.Generator().manual_seed(12345))
        self.test_x, self.test_y = x.to(device), y.to(device)

    @property
    def card_fields(self) -> dict:
        return {"task": {"name": "parity", "bits": self.bits}, "dataset": f"parity-{self.bits} (generated, Graves 2016)", "classes": ["even", "odd"], "preprocess": None}

    def model_kwargs(self) -> dict:
        return {"input_kind": "features", "input_size": self.bits, "output_size": 2, "output": "last"}

    def train_batch(self, generator: torch.Generator, batch_size: int):
        x, y = tasks.parity_batch(batch_size, self.bits, generator)
        return x.to(self.device), y.to(self.device)

    def loss(self, model, batch, hp: dict):
        x, y = batch
        trace = model.trace(x)
        task_loss = task_loss_of(model, trace, y)
        stats = {"loss": task_loss.detach(), "acc": (trace.logits.argmax(-1) == y).float().mean(), "ponder": trace.ponder.detach().mean()}
        return task_loss + model.adaptive_loss(trace, **hp), stats

    @torch.no_grad()
    def evaluate(self, model, limit: Optional[int] = None, batch_size: int = 1000) -> dict:
        n = self.EVAL_EXAMPLES if limit is None else min(limit, self.EVAL_EXAMPLES)
        correct, ponder, steps = [], [], []
        for start in range(0, n, batch_size):
            x, y = self.test_x[start : min(n, start + batch_size)], self.test_y[start : min(n, start + batch_size)]
            trace = model.trace(x)
            correct.append(trace.logits.argmax(-1) == y)
            ponder.append(trace.ponder[:, 0])
            steps.append(trace.steps[:, 0].float())
        correct, ponder, steps = torch.cat(correct), torch.cat(ponder), torch.cat(steps)
        nonzero = tasks.parity_nonzero(self.test_x[:n])
        curve = {str(k): mean_or_nan(ponder[nonzero == k]) for k in range(1, self.bits + 1) if bool((nonzero == k).any())}
        return {
            "examples": n,
            "accuracy": mean_or_nan(correct),
            "mean_ponder": mean_or_nan(ponder),
            "mean_steps": mean_or_nan(steps),
            "ponder_by_nonzero": curve,
        }


# The character classes of Graves's Wikipedia analysis (section 3.5), in display order; line
# breaks and tabs are kept apart from markup, which they would otherwise dominate.
CHAR_CLASSES = ("space", "punctuation", "word_start", "letter", "digit", "newline", "other")
CHAR_CLASS_LABELS = {"space": "space", "punctuation": "punctuation", "word_start": "word start", "letter": "letter",
                     "digit": "digit", "newline": "line break / tab", "other": "markup / other"}
PUNCTUATION = set(".,;:!?'\"()[]{}-/")


def char_class(char: str, previous: Optional[str]) -> str:
    """The class of a character: space, punctuation, the first letter of a word (a letter not
    after a letter), any other letter, digit, line break / tab, or markup / other (<>&*=#_...)."""
    if char == " ":
        return "space"
    if char in "\n\r\t":
        return "newline"
    if char.isdigit():
        return "digit"
    if char.isalpha():
        return "letter" if previous is not None and previous.isalpha() else "word_start"
    if char in PUNCTUATION:
        return "punctuation"
    return "other"


def byte_class(byte: int, previous: Optional[int]) -> str:
    """`char_class` of a byte the LM reads: ASCII bytes are characters; a byte of a multi-byte
    UTF-8 character (>= 128) counts as markup / other (the byte alone is no letter)."""
    if byte >= 128:
        return "other"
    return char_class(chr(byte), None if previous is None or previous >= 128 else chr(previous))


def _pearson(a: torch.Tensor, b: torch.Tensor) -> Optional[float]:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = float(a.norm() * b.norm())
    return float((a * b).sum()) / denominator if denominator > 0 else None


def ponder_statistics(steps: torch.Tensor, ponders: torch.Tensor, losses: torch.Tensor, classes: list[str],
                      max_steps: Optional[int], token_layers: Optional[torch.Tensor] = None,
                      layer_names: Optional[list[str]] = None) -> dict:
    """Per-byte N, N + R and loss (nats) -> what the text view's corpus panel and the card show:
    per class the mean and spread (std over the class's bytes) of N and N + R and the bits; how
    often N takes its most common value and the cap; ponder vs surprisal correlations. With
    token_layers [bytes, L] (Trace.token_layers), per class also "layers": the fraction of the
    class's bytes that each layer computed, and "layer_names" (the model's, else numbered)."""
    per_class = {}
    for name in CHAR_CLASSES:
        index = torch.tensor([c == name for c in classes], dtype=torch.bool)
        if bool(index.any()):
            n, r = steps[index].double(), ponders[index].double()
            per_class[name] = {"count": int(index.sum()), "steps": float(n.mean()), "steps_std": float(n.std(unbiased=False)),
                               "ponder": float(r.mean()), "ponder_std": float(r.std(unbiased=False)), "bits": mean_or_nan(losses[index]) / math.log(2)}
            if token_layers is not None:
                per_class[name]["layers"] = [round(float(v), 5) for v in token_layers[index].double().mean(0)]
    values, counts = steps.round().long().unique(return_counts=True)
    out = {
        "per_char_class": per_class,
        "steps_histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
        "steps_mode": int(values[counts.argmax()]),
        "steps_off_mode_fraction": 1.0 - float(counts.max()) / len(steps),
        "corr_ponder_surprisal": _pearson(ponders, losses),
        "corr_steps_surprisal": _pearson(steps, losses),
    }
    if max_steps is not None:
        out["max_steps"] = int(max_steps)
        out["steps_at_cap_fraction"] = float((steps >= max_steps).double().mean())
    if token_layers is not None:
        out["layer_names"] = token_layer_labels(layer_names, token_layers.shape[1])
        out["layer_rates"] = [round(float(v), 5) for v in token_layers.double().mean(0)]  # over all bytes
    return out


class BytesLM:
    """Next-byte prediction on English prose (UTF-8 bytes, 256-way output)."""

    def __init__(self, dataset: str, device: torch.device, seq_len: int = 100):
        self.dataset, self.device, self.seq_len = dataset, device, seq_len
        text = data.load_text_corpus(dataset)
        train, held_out = data.split_text(text)
        self.train = torch.tensor(list(train), dtype=torch.long)
        self.held_out = torch.tensor(list(held_out), dtype=torch.long)

    @property
    def card_fields(self) -> dict:
        return {"task": {"name": "bytes-lm", "seq_len": self.seq_len}, "dataset": self.dataset, "classes": None, "preprocess": None}

    def model_kwargs(self) -> dict:
        return {"input_kind": "bytes", "output_size": 256, "output": "sequence"}

    def train_batch(self, generator: torch.Generator, batch_size: int):
        starts = torch.randint(0, len(self.train) - self.seq_len - 1, (batch_size,), generator=generator)
        windows = torch.stack([self.train[s : s + self.seq_len + 1] for s in starts.tolist()])
        windows = windows.to(self.device)
        return windows[:, :-1], windows[:, 1:]

    def loss(self, model, batch, hp: dict):
        x, y = batch
        trace = model.trace(x)
        task_loss = F.cross_entropy(trace.logits.reshape(-1, 256), y.reshape(-1))
        stats = {"loss": task_loss.detach(), "bpb": task_loss.detach() / math.log(2), "ponder": trace.ponder.detach().mean(), "steps": trace.steps.float().mean()}
        return task_loss + model.adaptive_loss(trace, **hp), stats

    def eval_windows(self, limit: Optional[int] = None) -> torch.Tensor:
        n_windows = (len(self.held_out) - 1) // self.seq_len
        if limit is not None:
            n_windows = min(n_windows, max(1, limit // self.seq_len))
        return self.held_out[: n_windows * self.seq_len + 1]

    def eval_pairs(self, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The evaluated windows as (inputs, targets), each [windows, seq_len]: the bytes read and
        the bytes each step predicts (the next ones)."""
        stream = self.eval_windows(limit)
        n = (len(stream) - 1) // self.seq_len * self.seq_len
        return stream[:n].view(-1, self.seq_len), stream[1 : n + 1].view(-1, self.seq_len)

    @torch.no_grad()
    def evaluate(self, model, limit: Optional[int] = None, batch_size: int = 64) -> dict:
        """Held-out bits per byte over non-overlapping windows, each started from a zero state;
        `limit` counts predicted bytes. The model must be in eval mode: a model may decide
        differently while training (a Mixture-of-Depths model routes by top-k, which reads later bytes)."""
        if getattr(model, "training", False):
            raise ValueError("evaluate a byte LM in eval mode (model.eval()): in training mode a model may route or halt by its training rule")
        inputs, targets = self.eval_pairs(limit)
        n_windows = len(inputs)
        losses, ponders, steps, layers, flops, dense = [], [], [], [], 0.0, 0.0
        device = next(model.parameters()).device  # the model's, wherever the text was loaded
        for start in range(0, n_windows, batch_size):
            x = inputs[start : start + batch_size].to(device)
            y = targets[start : start + batch_size].to(device)
            trace = model.trace(x)
            losses.append(F.cross_entropy(trace.logits.reshape(-1, 256), y.reshape(-1), reduction="none").cpu())
            ponders.append(trace.ponder.reshape(-1).cpu())
            steps.append(trace.steps.reshape(-1).float().cpu())
            flops, dense = flops + float(trace.flops.double().sum()), dense + float(trace.dense_flops) * x.shape[0]
            if trace.token_layers is not None:
                layers.append(trace.token_layers.reshape(-1, trace.token_layers.shape[-1]).cpu())
        losses, ponders, steps = torch.cat(losses), torch.cat(ponders), torch.cat(steps)
        token_layers = torch.cat(layers) if layers else None
        flat_inputs = inputs.reshape(-1).tolist()
        classes = [byte_class(b, flat_inputs[i - 1] if i % self.seq_len else None) for i, b in enumerate(flat_inputs)]
        # The class of the byte being read at step t; its loss is that of predicting byte t + 1.
        return {
            "bytes": len(losses),
            "bits_per_byte": mean_or_nan(losses) / math.log(2),
            "mean_ponder": mean_or_nan(ponders),
            "mean_steps": mean_or_nan(steps),
            "flops_ratio": flops / dense if dense > 0 else None,  # executed / the dense twin's (Trace.dense_flops), over the windows
            **ponder_statistics(steps, ponders, losses, classes, getattr(model, "max_steps", None) if getattr(model, "act", False) else None,
                                token_layers, getattr(model, "token_layer_names", None)),
        }
