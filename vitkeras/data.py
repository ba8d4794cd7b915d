"""Datasets, splits, subsets and the input pipeline.

Names accepted by `load` and `load_arrays`:

- "shapes": the embedded synthetic dataset (`make_shapes`), generated from a seed, offline.
- "shapes-translation": the same, with objects confined to the left third of
  the image in training and anywhere in the test split (what translation
  equivariance buys).
- "cifar10", "cifar100": through tensorflow-datasets (downloaded when online);
  "train" is the first 90% of the upstream train split, "validation" the last 10%.
- "cats_vs_dogs": through tensorflow-datasets; upstream has only a train split,
  cut here into train/validation/test 80/10/10 by a seeded hash of each file name.
- any name followed by `[class,class,...]`, e.g. "cifar10[cat,dog]": only those
  classes, relabelled 0, 1, ... in the order given.
- "folder:PATH": a folder with one subfolder per class. If PATH has `train/`
  and `test/` subfolders (like CIFAR-10 exported as image files), those
  are the splits (without a `val/` or `validation/` folder, a seeded 10% of
  train is the validation split); a folder with class subfolders only is
  split 80/10/10 by a seeded hash of each file's path (other split-folder
  layouts, such as train/ + val/ alone, are refused). Files that are not decodable images are skipped and counted in a warning.

Images come out as uint8 (H, W, C) and integer labels; `make_pipeline` batches,
augments (Keras preprocessing layers), rescales, normalizes and prefetches.
tf.data is used here only, so the models stay backend-agnostic.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

__all__ = [
    "SHAPE_CLASSES",
    "SPLITS",
    "ArrayData",
    "DatasetInfo",
    "DatasetUnavailableError",
    "make_shapes",
    "load",
    "load_arrays",
    "cache_decoded",
    "check_cache_limit",
    "stratified_subset",
    "stratified_sample",
    "split_classes",
    "patch_permutation",
    "permute_patches",
    "make_augmentation",
    "make_pipeline",
]

SHAPE_CLASSES = ("disc", "ring", "square", "triangle", "cross", "bar")
SPLITS = ("train", "validation", "test")
TFDS_NAMES = ("cifar10", "cifar100", "cats_vs_dogs")
# Every name `load` accepts, besides "folder:PATH".
DATASET_NAMES = ("shapes", "shapes-translation", *TFDS_NAMES)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The embedded dataset's default image side (16: 16 tokens of 4x4 patches, so the default
# experiment fits in 2.5 minutes on 2 CPU cores), the sizes of its splits, and the seeds
# that make the splits distinct.
SHAPES_IMAGE_SIZE = 16
SHAPE_COLOURS = ("light-on-dark", "any")  # `make_shapes` colour rules, the default first
SHAPES_SPLIT_SIZES = {"train": 18000, "validation": 1200, "test": 2400}
SHAPES_SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}
# `cache_decoded`: decoded images are held in memory up to this many GiB (cats_vs_dogs's 18,600
# training images take 2.6 GiB at 224x224, 0.7 GiB at 112x112; a Colab machine has 12.7 GB).
DEFAULT_CACHE_GIB = 4.0
# Fractions of the hash-based train/validation/test split (cats_vs_dogs, flat folders).
HASH_SPLIT = (0.8, 0.1, 0.1)


class DatasetUnavailableError(RuntimeError):
    """A dataset could not be downloaded or found; the message says how to use a local copy."""


@dataclasses.dataclass
class ArrayData:
    """Labelled images held in memory.

    Attributes:
        images: uint8 array (n, H, W, C).
        labels: int32 array (n,).
        class_names: name of each label.
        centers: for generated shapes, each object's centre (x, y) in pixels; else None.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    centers: np.ndarray | None = None

    def __len__(self):
        return len(self.labels)

    @property
    def num_classes(self):
        return len(self.class_names)

    def take(self, indices):
        """The examples at `indices`, as a new ArrayData."""
        centers = None if self.centers is None else self.centers[indices]
        return ArrayData(self.images[indices], self.labels[indices], self.class_names, centers)


@dataclasses.dataclass
class DatasetInfo:
    """What `load` knows about a split: its size, classes and what was skipped."""

    name: str
    split: str
    num_examples: int
    class_names: tuple
    skipped_files: int = 0
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)  # in stream order

    @property
    def num_classes(self):
        return len(self.class_names)


# --------------------------------------------------------------------------- #
# The embedded dataset
# --------------------------------------------------------------------------- #
def _shape_mask(kind, x, y):
    """Which pixels, at shape-frame coordinates (x, y) in units of the radius, are inside `kind`."""
    r = np.sqrt(x * x + y * y)
    if kind == "disc":
        return r <= 1.0
    if kind == "ring":
        return (r <= 1.0) & (r >= 0.6)
    if kind == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.8
    if kind == "triangle":
        return (y <= 0.6) & (y >= 2.0 * np.abs(x) - 1.0)
    if kind == "cross":
        return ((np.abs(x) <= 0.3) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1.0))
    return (np.abs(x) <= 1.0) & (np.abs(y) <= 0.3)  # bar


def make_shapes(num_examples, image_size=32, num_classes=6, seed=0, region="anywhere", rotation=0.0,
                colours="light-on-dark"):
    """The embedded "shapes" dataset: one coloured shape per image on textured noise.

    The class is the shape (disc, ring, square, triangle, cross, bar); position,
    size and colours are random (and the rotation, if asked for). A CNN (local filters, shared across
    positions, then global pooling) recognises a shape wherever it is; a ViT
    from scratch must learn each patch position separately, so it needs far
    more examples: the paper's inductive-bias argument in miniature.

    The colours decide how much data both models need. "light-on-dark" (the
    default since 2026-12-06): a random light colour (every channel 0.6-0.9)
    on a random dark one (0.1-0.4), so a shape is always brighter than its
    background. "any": the background any colour (0.2-0.8 a channel) and the
    shape about half the range away in every channel, wrapped around, so a
    channel can be brighter or darker: learning that colours do not matter
    takes the ViT about ten times the images and steps (benchmarks/RESULTS.md,
    "Act 2 in 2.5 minutes"); every act-2 number before that date used it.

    Args:
        num_examples: n.
        image_size: side of the square images (at least 16).
        num_classes: K, the first K of `SHAPE_CLASSES` (2 to 6).
        seed: everything is generated from it; same seed, same images.
        region: "anywhere", or "left" / "right": the object's centre stays in
            that third of the image (for the translation experiment).
        rotation: rotate each shape by a random angle in [-rotation, rotation] degrees.
        colours: "light-on-dark" or "any" (above).

    Returns:
        ArrayData with uint8 images (n, S, S, 3) and balanced random labels.

    Example:
    >>> data = make_shapes(8, image_size=32, seed=0)
    >>> data.images.shape, data.images.dtype.name, data.class_names[:2]
    ((8, 32, 32, 3), 'uint8', ('disc', 'ring'))
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer of at least 16, got {image_size!r}.")
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be between 2 and {len(SHAPE_CLASSES)}, got {num_classes!r}.")
    if region not in ("anywhere", "left", "right"):
        raise ValueError(f"region must be 'anywhere', 'left' or 'right', got {region!r}.")
    if colours not in SHAPE_COLOURS:
        raise ValueError(f"colours must be one of {SHAPE_COLOURS}, got {colours!r}.")
    rng = np.random.default_rng(seed)
    n, S = int(num_examples), int(image_size)
    labels = rng.permutation(np.arange(n) % num_classes).astype("int32")  # balanced
    # Background: a coarse 4x4 colour texture, blended with a base colour, plus pixel noise.
    cells = 4
    coarse = rng.uniform(0.0, 1.0, (n, cells, cells, 3))
    texture = np.repeat(np.repeat(coarse, -(-S // cells), axis=1), -(-S // cells), axis=2)[:, :S, :S]  # (n, S, S, 3)
    if colours == "light-on-dark":
        base = rng.uniform(0.1, 0.4, (n, 1, 1, 3))
        foreground = rng.uniform(0.6, 0.9, (n, 1, 1, 3))  # brighter than the base in every channel
    else:  # "any": drawn in this order, so the images are those of the dataset before 2026-12-06
        base = rng.uniform(0.2, 0.8, (n, 1, 1, 3))
    background = 0.8 * base + 0.2 * texture + rng.normal(0.0, 0.04, (n, S, S, 3))  # (n, S, S, 3)
    if colours == "any":
        foreground = (base + 0.5 + rng.uniform(-0.15, 0.15, (n, 1, 1, 3))) % 1.0  # far from the base colour
    # Geometry: radius 20-32% of the image, centre inside the allowed region.
    radius = rng.uniform(0.2, 0.32, n) * S
    low, high = radius, S - radius
    if region != "anywhere":
        third = S / 3.0
        low = np.minimum(low, third) if region == "left" else np.maximum(low, 2 * third)
        high = np.minimum(high, third) if region == "left" else np.maximum(high, 2 * third)
    cx = rng.uniform(low, high)
    cy = rng.uniform(radius, S - radius)
    theta = np.deg2rad(rng.uniform(-rotation, rotation, n))
    grid = np.arange(S) + 0.5
    dx = (grid[None, None, :] - cx[:, None, None]) / radius[:, None, None]  # (n, 1, S)
    dy = (grid[None, :, None] - cy[:, None, None]) / radius[:, None, None]  # (n, S, 1)
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    x, y = cos * dx + sin * dy, -sin * dx + cos * dy  # (n, S, S) each, shape frame
    inside = np.zeros((n, S, S), dtype=bool)
    for k, kind in enumerate(SHAPE_CLASSES[:num_classes]):
        chosen = labels == k
        inside[chosen] = _shape_mask(kind, x[chosen], y[chosen])
    shading = foreground + rng.normal(0.0, 0.04, (n, S, S, 3))
    images = np.where(inside[..., None], shading, background)  # (n, S, S, 3)
    images = (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype("uint8")
    return ArrayData(images, labels, SHAPE_CLASSES[:num_classes], np.stack([cx, cy], axis=1))


def _load_shapes(name, split, image_size, shapes_size=None):
    region = "left" if (name == "shapes-translation" and split != "test") else "anywhere"
    size = shapes_size or SHAPES_SPLIT_SIZES[split]
    return make_shapes(size, image_size=image_size or SHAPES_IMAGE_SIZE, seed=SHAPES_SPLIT_SEEDS[split], region=region)


# --------------------------------------------------------------------------- #
# tensorflow-datasets
# --------------------------------------------------------------------------- #
def _hash_fraction(text, seed):
    """A number in [0, 1) fixed by `text` and `seed`: the same file lands in the same split everywhere."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _split_of(fraction):
    train, validation, _ = HASH_SPLIT
    if fraction < train:
        return "train"
    return "validation" if fraction < train + validation else "test"


def _unavailable(name, error, data_dir):
    where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return DatasetUnavailableError(
        f"Could not download dataset {name!r}: the network was unreachable or the download failed "
        f"({type(error).__name__}: {error}). To use a local copy: (1) on a machine with internet run "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.load('{name}')\"`, copy the folder "
        f"{where}/{name} to this machine and pass data_dir=... (CLI: --data-dir) or set TFDS_DATA_DIR; or "
        f"(2) put the images in a folder with one subfolder per class and use 'folder:PATH'."
    )


def _is_download_error(error):
    names = " ".join(cls.__name__ for cls in type(error).__mro__)
    text = str(error).lower()
    return isinstance(error, (OSError, ConnectionError, TimeoutError)) or any(
        word in names or word in text for word in ("Download", "Connection", "URLError", "HTTP", "network", "resolve")
    )


def _where(dataset, mask):
    """The elements of `dataset` at the positions where the boolean array `mask` is True.

    One lambda per line: AutoGraph reads a lambda's source to convert it, and two lambdas of the
    same arguments on one line make it give up with a warning.
    """
    import tensorflow as tf

    mask = tf.constant(mask)
    dataset = dataset.enumerate().filter(lambda index, _: tf.gather(mask, index))
    return dataset.map(lambda _, example: example)


def _load_tfds(name, split, data_dir, split_seed):
    """(dataset of (encoded image, label), decode, DatasetInfo) of a tensorflow-datasets split.

    The images stay encoded (`tfds.decode.SkipDecoding`) so that `load` decodes only the
    examples it keeps: cats_vs_dogs has one upstream split of 23,262 JPEGs, and decoding all of
    them to keep a 1,000-image training subset made every epoch decode 23 times too many.
    `decode` maps one encoded image to (H, W, C) uint8.
    """
    import tensorflow_datasets as tfds

    kwargs = dict(data_dir=data_dir, with_info=True, shuffle_files=False,
                  decoders={"image": tfds.decode.SkipDecoding()})
    tfds_split = "train" if name == "cats_vs_dogs" else {"validation": "train[90%:]", "train": "train[:90%]"}.get(split, split)
    try:
        dataset, info = tfds.load(name, split=tfds_split, **kwargs)
    except Exception as error:  # noqa: BLE001 - re-raised with advice when it is a download failure
        if _is_download_error(error):
            raise _unavailable(name, error, data_dir) from error
        raise
    class_names = tuple(info.features["label"].names)
    if name == "cats_vs_dogs":
        # Seeded hash of the file name: a stable 80/10/10 split of the only upstream split.
        pairs = list(tfds.as_numpy(dataset.map(lambda e: (e["image/filename"], e["label"]))))
        keep = np.array([_split_of(_hash_fraction(n.decode(), split_seed)) == split for n, _ in pairs])
        labels = np.array([label for _, label in pairs], dtype="int32")[keep]
        dataset = _where(dataset, keep)
    else:
        labels = np.fromiter(tfds.as_numpy(dataset.map(lambda e: e["label"])), dtype="int32")
    dataset = dataset.map(lambda e: (e["image"], e["label"]))
    decode = info.features["image"].decode_example
    return dataset, decode, DatasetInfo(name, split, len(labels), class_names, labels=labels)


# --------------------------------------------------------------------------- #
# Folders of images
# --------------------------------------------------------------------------- #
def _decodes(path):
    """True when PIL can fully decode the file (catches truncated and fake images)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # noqa: BLE001 - any failure to decode means "skip this file"
        return False


def _class_dirs(root):
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(root, split, split_seed):
    """Decodable image files of one split of a folder dataset, with labels, and the number skipped."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetUnavailableError(
            f"Image folder {str(root)!r} does not exist. Expected one subfolder per class "
            f"(PATH/<class>/<image>), optionally under PATH/train and PATH/test."
        )
    split_dirs = {p.name: p for p in root.iterdir() if p.is_dir() and p.name in ("train", "val", "validation", "test")}
    presplit = "train" in split_dirs and "test" in split_dirs
    if split_dirs and not presplit:  # e.g. train/ + val/: split names would be read as class names
        raise ValueError(
            f"Image folder {str(root)!r} has split folders {sorted(split_dirs)} but not both train/ and test/. "
            f"Allowed: train/ and test/ (and optionally val/ or validation/), each with one subfolder per class, "
            f"or one subfolder per class directly under the folder."
        )
    val_dir = split_dirs.get("validation") or split_dirs.get("val")
    carve = None  # for train/ + test/ without a validation folder: 10% of train, by seeded hash
    if presplit:
        class_names = tuple(p.name for p in _class_dirs(split_dirs["train"]))
        if split == "test":
            class_root = split_dirs["test"]
        elif split == "validation" and val_dir is not None:
            class_root = val_dir
        else:
            class_root = split_dirs["train"]
            carve = None if val_dir is not None else split
    else:
        class_root = root
        class_names = tuple(p.name for p in _class_dirs(root))
    if len(class_names) < 2:
        raise ValueError(f"Image folder {str(class_root)!r} needs at least two class subfolders, found {list(class_names)}.")

    def in_split(path):
        if not presplit:
            return _split_of(_hash_fraction(str(path.relative_to(root)), split_seed)) == split
        if carve is None:
            return True
        is_validation = _hash_fraction(str(path.relative_to(root)), split_seed) >= 0.9
        return is_validation == (carve == "validation")

    candidates, labels, skipped = [], [], 0
    for label, class_name in enumerate(class_names):
        directory = Path(class_root) / class_name
        for path in sorted(directory.rglob("*")) if directory.is_dir() else []:
            if not path.is_file() or not in_split(path):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped += 1
                continue
            candidates.append(str(path))
            labels.append(label)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        good = list(pool.map(_decodes, candidates))
    skipped += good.count(False)
    files = [f for f, ok in zip(candidates, good) if ok]
    labels = [label for label, ok in zip(labels, good) if ok]
    if skipped:
        bad = [f for f, ok in zip(candidates, good) if not ok][:3]
        warnings.warn(
            f"Skipped {skipped} file(s) in {class_root} that are not decodable images "
            f"(extensions allowed: {', '.join(IMAGE_EXTENSIONS)}){'; e.g. ' + ', '.join(bad) if bad else ''}.",
            stacklevel=3,
        )
    if not files:
        raise ValueError(f"No decodable images for split {split!r} in {class_root}.")
    return files, np.array(labels, dtype="int32"), class_names, skipped


def _load_folder(root, split, split_seed, indices=None, scan=None):
    """(dataset, info) of a folder split; `indices` keeps only those files; `scan` reuses a `_scan_folder` result."""
    import tensorflow as tf

    files, labels, class_names, skipped = scan or _scan_folder(root, split, split_seed)
    if indices is not None:  # a subset: only these files are ever read
        files, labels = [files[i] for i in indices], labels[indices]

    def read(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)  # (H, W, 3) uint8
        return image, label

    dataset = tf.data.Dataset.from_tensor_slices((files, labels)).map(read, num_parallel_calls=tf.data.AUTOTUNE)
    # Files PIL decoded but TF cannot (rare formats) are dropped instead of stopping an epoch.
    dataset = dataset.ignore_errors()
    return dataset, DatasetInfo(f"folder:{root}", split, len(files), class_names, skipped, labels)


# --------------------------------------------------------------------------- #
# One entry point for every dataset
# --------------------------------------------------------------------------- #
def split_classes(name):
    """("cifar10", ("cat", "dog")) for "cifar10[cat,dog]"; (name, None) without a class list.

    Example:
    >>> split_classes("folder:/data/cifar10[cat,dog]")
    ('folder:/data/cifar10', ('cat', 'dog'))
    """
    if isinstance(name, str) and name.endswith("]") and "[" in name:
        base, _, inside = name[:-1].rpartition("[")
        classes = tuple(c.strip() for c in inside.split(",") if c.strip())
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"Dataset {name!r}: list at least two different classes in [...], e.g. 'cifar10[cat,dog]'.")
        return base, classes
    return name, None


def _class_indices(dataset_name, info, classes):
    """Positions in the base split and the new labels of a class selection."""
    unknown = [c for c in classes if c not in info.class_names]
    if unknown:
        raise ValueError(f"Dataset {dataset_name!r} has no class(es) {unknown}; allowed: {list(info.class_names)}.")
    old = [info.class_names.index(c) for c in classes]
    remap = np.full(len(info.class_names), -1, dtype="int32")
    remap[old] = np.arange(len(old))
    return np.flatnonzero(remap[info.labels] >= 0), remap


def _check_name_and_split(name, split):
    name, _ = split_classes(name)
    if not isinstance(name, str) or not (name in DATASET_NAMES or name.startswith("folder:")):
        raise ValueError(f"Unknown dataset {name!r}. Known: {list(DATASET_NAMES)} or 'folder:PATH'.")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; allowed: {list(SPLITS)}.")


def load(name, split="train", image_size=None, data_dir=None, split_seed=0, max_examples=None, subset_seed=0):
    """A split of a dataset as a `tf.data.Dataset` of (uint8 image (H, W, C), int32 label), unbatched.

    Args:
        name: "shapes", "shapes-translation", "cifar10", "cifar100", "cats_vs_dogs" or "folder:PATH".
        split: "train", "validation" or "test".
        image_size: resize every image to this square size (needed for datasets of mixed sizes).
        data_dir: where tensorflow-datasets keeps its data (None: its default).
        split_seed: seed of the hash-based splits (cats_vs_dogs and flat folders).
        max_examples: keep only this many examples, a stratified seeded sample
            (`stratified_sample`: every class in proportion, never "the first N",
            which in a class-sorted folder would be one class). None: all.
        subset_seed: seed of that sample.

    Returns:
        (dataset, DatasetInfo); `info.labels` are the labels in stream order.
    """
    import tensorflow as tf

    _check_name_and_split(name, split)
    full_name, (name, classes) = name, split_classes(name)
    decode = None  # tensorflow-datasets images arrive encoded, and are decoded once filtered
    if name.startswith("shapes"):
        arrays = _load_shapes(name, split, image_size)
        dataset = tf.data.Dataset.from_tensor_slices((arrays.images, arrays.labels))
        info = DatasetInfo(name, split, len(arrays), arrays.class_names, labels=arrays.labels)
    elif name.startswith("folder:"):
        scan = _scan_folder(name[len("folder:") :], split, split_seed)
        dataset, info = _load_folder(name[len("folder:") :], split, split_seed, scan=scan)
    else:
        dataset, decode, info = _load_tfds(name, split, data_dir, split_seed)
    # Which examples of the split to keep (a class selection, a stratified sample) and their new labels.
    keep, remap = np.arange(info.num_examples), np.arange(info.num_classes, dtype="int32")
    if classes is not None:
        keep, remap = _class_indices(full_name, info, classes)
    if max_examples is not None:
        keep = keep[stratified_sample(remap[info.labels[keep]], max_examples, subset_seed, what=f"{full_name} {split}")]
    if len(keep) < info.num_examples:
        if name.startswith("folder:"):  # only these files are ever read
            dataset, _ = _load_folder(name[len("folder:") :], split, split_seed, keep, scan=scan)
        else:
            mask = np.zeros(info.num_examples, dtype=bool)
            mask[keep] = True
            dataset = _where(dataset, mask)
    if decode is not None:
        dataset = dataset.map(lambda x, y: (decode(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if classes is not None:
        table = tf.constant(remap)
        dataset = dataset.map(lambda x, y: (x, tf.gather(table, tf.cast(y, tf.int32))))
    info = dataclasses.replace(info, name=full_name, num_examples=len(keep), labels=remap[info.labels[keep]],
                               class_names=classes or info.class_names)
    if image_size is not None and not name.startswith("shapes"):
        size = (int(image_size), int(image_size))
        dataset = dataset.map(
            lambda x, y: (tf.cast(tf.clip_by_value(tf.round(tf.image.resize(x, size, antialias=True)), 0, 255), tf.uint8), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.map(lambda x, y: (x, tf.cast(y, tf.int32)))
    return dataset, info


def check_cache_limit(limit_gib, name="limit_gib"):
    """A clear error unless `limit_gib` (called `name` in the message) is a number of GiB >= 0."""
    if isinstance(limit_gib, bool) or not isinstance(limit_gib, (int, float)) or not limit_gib >= 0:
        raise ValueError(f"{name} must be a number of GiB >= 0 (0: no cache), got {limit_gib!r}.")


def cache_decoded(dataset, num_examples, image_size, limit_gib=DEFAULT_CACHE_GIB):
    """A `load` stream that keeps its decoded images in memory after its first full pass, if they fit.

    Reading JPEG files (or tensorflow-datasets records) decodes and resizes every
    image on every pass; on 2 CPU cores that delivered 151 to 250 images per second
    at 224x224 (benchmarks/RESULTS.md), less than a GPU trains on. Every pipeline
    built from the returned dataset shares the cache: a linear probe's pass over
    the training images fills it, and the fine-tuning epochs read from memory.
    A pass that stops early fills nothing (the next full pass does).

    Args:
        dataset: an unbatched stream of (uint8 image, label) from `load`.
        num_examples: its length (`DatasetInfo.num_examples`).
        image_size: the square size its images were resized to.
        limit_gib: the most memory the cache may take (0: never cache).

    Returns:
        (dataset, cached bytes): the cached dataset and the bytes its images take, or the
        stream unchanged and 0 when they would take more than `limit_gib`.

    Example:
    >>> stream, _ = load("shapes", "test", image_size=16)
    >>> cached, size = cache_decoded(stream, 2400, 16)
    >>> size
    1843200
    """
    check_cache_limit(limit_gib)
    if not image_size:
        raise ValueError("cache_decoded needs the size images were resized to (load(..., image_size=S)); "
                         f"got {image_size!r}.")
    size = int(num_examples) * int(image_size) ** 2 * 3  # uint8 (S, S, 3) per image
    if size > limit_gib * 2**30:
        return dataset, 0
    return dataset.cache(), size


def load_arrays(name, split="train", image_size=None, data_dir=None, split_seed=0, shapes_size=None):
    """A split held in memory as `ArrayData` (for subsets and small datasets). Arguments as `load`.

    `shapes_size` overrides the number of generated examples for "shapes" datasets (before a
    class selection keeps some of them).

    Example:
    >>> load_arrays("shapes", "test", shapes_size=10).images.shape
    (10, 16, 16, 3)
    >>> load_arrays("shapes[square,disc]", "test", shapes_size=12).class_names
    ('square', 'disc')
    """
    _check_name_and_split(name, split)
    base, classes = split_classes(name)
    if base.startswith("shapes"):  # generated in memory: selected here, without a tf.data pipeline
        arrays = _load_shapes(base, split, image_size, shapes_size)
        if classes is None:
            return arrays
        info = DatasetInfo(base, split, len(arrays), arrays.class_names, labels=arrays.labels)
        keep, remap = _class_indices(name, info, classes)
        kept = arrays.take(keep)
        return ArrayData(kept.images, remap[kept.labels], tuple(classes), kept.centers)
    import tensorflow as tf

    dataset, info = load(name, split, image_size, data_dir, split_seed)
    images, labels = [], []
    for x, y in dataset.batch(1024).prefetch(tf.data.AUTOTUNE).as_numpy_iterator():
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(f"Dataset {name!r} split {split!r} is empty.")
    return ArrayData(np.concatenate(images), np.concatenate(labels).astype("int32"), info.class_names)


def stratified_sample(labels, total, seed=0, what="the split"):
    """Indices of `total` examples drawn with a seed, every class in proportion to its size (sorted).

    Each class gets its share of `total` (largest remainders round up), at least one
    example; the examples inside a class are drawn at random.

    Args:
        labels: int labels of the whole split.
        total: how many examples to keep; at least the number of classes, at most the split's size.
        seed: same seed, same sample.
        what: names the split in error messages.

    Example:
    >>> labels = np.array([0] * 6 + [1] * 6)  # sorted by class, like a folder
    >>> np.bincount(labels[stratified_sample(labels, 4, seed=0)]).tolist()
    [2, 2]
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if isinstance(total, bool) or not isinstance(total, (int, np.integer)):
        raise ValueError(f"The subset size must be an integer, got {total!r}.")
    if total < len(classes):
        raise ValueError(
            f"A subset of {total} example(s) cannot hold all {len(classes)} classes of {what}; "
            f"allowed: {len(classes)} to {len(labels)}."
        )
    if total > len(labels):
        raise ValueError(f"A subset of {total} examples is larger than {what} ({len(labels)} examples); "
                         f"allowed: {len(classes)} to {len(labels)}.")
    share = counts * (total / len(labels))
    take = np.maximum(np.floor(share).astype(int), 1)
    for index in np.argsort(-(share - np.floor(share)), kind="stable"):  # largest remainders first
        if take.sum() >= total:
            break
        if take[index] < counts[index]:
            take[index] += 1
    while take.sum() > total:  # the minimum of one per class overshot: trim the largest
        take[np.argmax(take)] -= 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def stratified_subset(labels, per_class, seed=0):
    """Indices of `per_class` examples of every class, drawn with a seed (sorted).

    Example:
    >>> stratified_subset(np.array([0, 1, 0, 1, 0, 1]), 2, seed=0).size
    4
    """
    labels = np.asarray(labels)
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class!r}.")
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise ValueError(
                f"Class {label} has only {len(members)} examples; cannot draw {per_class} per class "
                f"(at most {min(np.bincount(labels))} per class here)."
            )
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------- #
# Shuffled patches: the inductive-bias experiment
# --------------------------------------------------------------------------- #
def patch_permutation(image_size, patch_size, seed=0):
    """One fixed random order of an image's P x P patches (row-major grid positions).

    `permute_patches(images, P, order)` puts patch `order[i]` at position i, the
    same for every image. A ViT with learned position embeddings sees only renamed
    positions; a CNN loses the neighbourhoods its local filters rely on.

    Example:
    >>> patch_permutation(16, 4, seed=0).shape
    (16,)
    """
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}; "
                         f"allowed patch sizes: {[p for p in range(1, image_size + 1) if image_size % p == 0]}.")
    grid = image_size // patch_size
    return np.random.default_rng(seed).permutation(grid * grid)


def permute_patches(images, patch_size, order):
    """Images (B, H, W, C) with patch `order[i]` moved to grid position i (NumPy or TensorFlow).

    `permute_patches(permute_patches(x, P, order), P, np.argsort(order))` is `x`.

    Example:
    >>> x = np.arange(16).reshape(1, 4, 4, 1)
    >>> permute_patches(x, 2, [3, 2, 1, 0])[0, :, :, 0]
    array([[10, 11,  8,  9],
           [14, 15, 12, 13],
           [ 2,  3,  0,  1],
           [ 6,  7,  4,  5]])
    """
    order = np.asarray(order)
    if isinstance(images, np.ndarray):
        reshape, transpose, take = np.reshape, np.transpose, lambda x, i: np.take(x, i, axis=1)
    else:  # a tf.Tensor inside tf.data
        import tensorflow as tf

        reshape, transpose, take = tf.reshape, tf.transpose, lambda x, i: tf.gather(x, i, axis=1)
    height, width, channels = (int(d) for d in images.shape[1:])
    rows, cols = height // patch_size, width // patch_size
    if rows * patch_size != height or cols * patch_size != width or sorted(order.tolist()) != list(range(rows * cols)):
        raise ValueError(f"Cannot permute {height}x{width} images in {patch_size}-pixel patches with an order of "
                         f"length {len(order)}; the order must be a permutation of range({rows * cols}).")
    x = reshape(images, (-1, rows, patch_size, cols, patch_size, channels))  # (B, r, P, c, P, C)
    x = transpose(x, (0, 1, 3, 2, 4, 5))  # (B, r, c, P, P, C)
    x = take(reshape(x, (-1, rows * cols, patch_size, patch_size, channels)), order)  # (B, N, P, P, C)
    x = transpose(reshape(x, (-1, rows, cols, patch_size, patch_size, channels)), (0, 1, 3, 2, 4, 5))  # (B, r, P, c, P, C)
    return reshape(x, (-1, height, width, channels))  # (B, H, W, C)


# --------------------------------------------------------------------------- #
# Augmentation and the input pipeline
# --------------------------------------------------------------------------- #
AUGMENTATIONS = ("none", "translate", "basic", "strong")


def make_augmentation(kind="basic", seed=0, dtype=None):
    """A list of Keras preprocessing layers that augment uint8-range images (values 0-255).

    A list rather than a `keras.Sequential`: each preprocessing layer runs on
    TensorFlow inside tf.data whatever the Keras backend, a Sequential does not.
    The same layers also run inside a model, on its device (`training.Augmented`);
    give them dtype="float32" there, so that a mixed-precision policy does not
    round the pixels to 16 bits before the model's own preprocessing.

    "translate": random translation by up to 1/8 of the size (about CIFAR's
    pad-4-and-crop), for experiments about position, where a flip would move
    what a model sees to the mirrored side (`shapes-translation`). "basic":
    horizontal flip, then that translation. "strong": basic plus RandAugment
    (2 ops, magnitude 0.5).

    Example:
    >>> [layer.__class__.__name__ for layer in make_augmentation("basic")]
    ['RandomFlip', 'RandomTranslation']
    """
    import keras

    if kind not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {list(AUGMENTATIONS)}, got {kind!r}.")
    if kind == "none":
        return []
    translation = keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=seed + 1, dtype=dtype)
    if kind == "translate":
        return [translation]
    layers = [keras.layers.RandomFlip("horizontal", seed=seed, dtype=dtype), translation]
    if kind == "strong":
        layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed + 2,
                                               dtype=dtype))
    return layers


def make_pipeline(
    data,
    batch_size=128,
    num_classes=None,
    training=False,
    augmentation="none",
    rescale=1.0 / 255.0,
    mean=None,
    std=None,
    mixup=0.0,
    cutmix=0.0,
    seed=0,
    repeat=False,
    resize=None,
    patch_order=None,
):
    """Batches of (float32 images, one-hot float32 labels) ready for `model.fit`.

    Args:
        data: ArrayData, or a tf.data.Dataset of (uint8 image, int label) from `load`.
        batch_size: examples per batch.
        num_classes: K for the one-hot labels (taken from ArrayData if None).
        training: shuffle (seeded) and augment.
        augmentation: "none", "translate", "basic" or "strong" (see `make_augmentation`); training only.
        rescale: multiply pixels by this (1/255 maps to [0, 1]; 1.0 keeps 0-255).
        mean, std: per-channel constants subtracted / divided after rescaling (None: none).
        mixup, cutmix: probability-free mixing strengths (0 = off): Keras MixUp(alpha) /
            CutMix(factor) on each training batch.
        seed: shuffling and augmentation seed.
        repeat: repeat forever (use `steps_per_epoch` in fit).
        resize: resize images to this square size (bilinear, antialiased) before augmenting,
            e.g. 32-pixel CIFAR to the 112 pixels a pretrained checkpoint is fine-tuned at.
        patch_order: (patch size, order) to shuffle every image's patches with `permute_patches`,
            after augmentation (so a ViT sees the same augmented images with renamed positions).
    """
    import keras
    import tensorflow as tf

    if isinstance(data, ArrayData):
        num_classes = num_classes or data.num_classes
        dataset = tf.data.Dataset.from_tensor_slices((data.images, data.labels))
        size = len(data)
    else:
        dataset, size = data, None
    if not num_classes:
        raise ValueError("num_classes is needed for a tf.data input.")
    if training:
        dataset = dataset.shuffle(min(size or 10_000, 50_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    # A repeated stream has no last partial batch to drop; leaving its batch dimension unknown lets
    # one traced training step serve every batch size (TensorFlow traces it again for each static
    # shape: seconds per run in the data-efficiency experiment, whose subsets differ in size).
    dataset = dataset.batch(batch_size, drop_remainder=training and not repeat)
    augment = make_augmentation(augmentation, seed) if training else []
    mixers = []
    if training and mixup:
        mixers.append(keras.layers.MixUp(alpha=mixup, seed=seed + 3))
    if training and cutmix:
        mixers.append(keras.layers.CutMix(factor=cutmix, seed=seed + 4))
    mean_t = None if mean is None else tf.constant(mean, tf.float32)
    std_t = None if std is None else tf.constant(std, tf.float32)

    def prepare(images, labels):
        images = tf.cast(images, tf.float32)  # (B, H, W, C), 0-255
        if resize is not None:
            images = tf.image.resize(images, (int(resize), int(resize)), antialias=True)  # (B, S, S, C)
        for layer in augment:
            images = layer(images, training=True)
        if patch_order is not None:
            images = permute_patches(images, *patch_order)
        labels = tf.one_hot(labels, num_classes)  # (B, K)
        for mixer in mixers:
            mixed = mixer({"images": images, "labels": labels}, training=True)
            images, labels = mixed["images"], mixed["labels"]
        images = images * rescale
        if mean_t is not None:
            images = images - mean_t
        if std_t is not None:
            images = images / std_t
        return images, labels

    # Random augmentation draws from the layers' stateful seed generators: a parallel map would
    # hand the random numbers to batches in thread order, so a seeded run would not repeat.
    parallel = None if (augment or mixers) else tf.data.AUTOTUNE
    return dataset.map(prepare, num_parallel_calls=parallel).prefetch(tf.data.AUTOTUNE)
