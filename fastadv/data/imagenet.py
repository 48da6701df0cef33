"""The ImageNet-1k (ILSVRC-2012) class list shipped with fastadv (imagenet_classes.tsv, package
data): WordNet IDs in the standard index order (the 1000 IDs sorted, the order of torchvision's
ImageFolder on ImageNet's train/val folders and of every pretrained ImageNet model) with their
readable names. A folder named by WordNet IDs (ImageNet-A, -R, -O, ImageNet's val set) is matched
to a 1000-output model through it."""

from __future__ import annotations

import functools
import os
import re

WORDNET_ID = re.compile(r"n\d{8}")
_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.tsv")


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 classes as (WordNet ID, names) pairs, class i at position i."""
    with open(_FILE, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip() and not line.startswith("#")]
    return tuple((wnid, names) for wnid, names in rows)


@functools.cache
def imagenet_index() -> dict[str, int]:
    """WordNet ID -> ImageNet-1k class index."""
    return {wnid: index for index, (wnid, _) in enumerate(imagenet_classes())}


def is_wordnet_id(name: str) -> bool:
    return WORDNET_ID.fullmatch(name) is not None
