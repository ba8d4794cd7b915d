"""Tests of vitkeras.data: the embedded dataset, folders, tfds paths (mocked), subsets, pipeline."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vitkeras import data

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- #
# The embedded dataset
# --------------------------------------------------------------------------- #
def test_shapes_are_deterministic_balanced_and_uint8():
    a = data.make_shapes(120, image_size=32, seed=3)
    b = data.make_shapes(120, image_size=32, seed=3)
    c = data.make_shapes(120, image_size=32, seed=4)
    assert a.images.shape == (120, 32, 32, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels).tolist() == [20] * 6
    assert a.class_names == data.SHAPE_CLASSES


def test_shapes_any_size_and_number_of_classes():
    small = data.make_shapes(10, image_size=20, num_classes=3, seed=0)
    assert small.images.shape == (10, 20, 20, 3) and set(small.labels) <= {0, 1, 2}
    assert small.class_names == ("disc", "ring", "square")


def test_each_filled_shape_is_drawn_at_its_recorded_centre_far_from_the_background_colour():
    shapes = data.make_shapes(120, image_size=32, seed=1)
    filled = [k for k, name in enumerate(data.SHAPE_CLASSES) if name != "ring"]  # a ring's centre is background

    def contrast(centers):  # |centre pixel - median border colour|, summed over RGB, per filled shape
        values = []
        for image, label, (x, y) in zip(shapes.images, shapes.labels, centers):
            if label in filled:
                border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
                values.append(np.abs(image[int(y), int(x)] - np.median(border, axis=0)).sum())
        return np.array(values)

    assert contrast(shapes.centers).min() > 150  # measured: at least 232
    # The same check with wrong centres fails: it can tell where the shapes are.
    assert np.median(contrast((shapes.centers + 16) % 32)) < 150
    assert contrast(shapes.centers[:, ::-1]).min() < 150  # x and y swapped


def _shape_minus_background(shapes):
    """(n, 3): mean colour inside each filled shape (its centre pixel) minus its median border colour."""
    rows = []
    for image, label, (x, y) in zip(shapes.images, shapes.labels, shapes.centers):
        if data.SHAPE_CLASSES[label] != "ring":  # a ring's centre is background
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(float)
            rows.append(image[int(y), int(x)].astype(float) - np.median(border, axis=0))
    return np.array(rows)


def test_light_on_dark_shapes_are_brighter_than_their_background_in_every_channel():
    light = _shape_minus_background(data.make_shapes(200, image_size=32, seed=5))
    assert light.min() > 30  # every channel: 0.6-0.9 against 0.1-0.4 blended with texture, noise aside
    # The old rule, kept as colours="any", has shapes darker than their background in some channel:
    # the check above can tell the two apart.
    anything = _shape_minus_background(data.make_shapes(200, image_size=32, seed=5, colours="any"))
    assert (anything < -30).any(axis=1).mean() > 0.5
    same = data.make_shapes(200, image_size=32, seed=5, colours="any")
    assert np.array_equal(same.labels, data.make_shapes(200, image_size=32, seed=5).labels)  # only colours differ
    with pytest.raises(ValueError, match=r"colours must be one of \('light-on-dark', 'any'\), got 'red'"):
        data.make_shapes(4, colours="red")


def test_translation_split_confines_training_objects_to_the_left_third():
    size = 32
    train = data.make_shapes(300, image_size=size, seed=0, region="left")
    test = data.load_arrays("shapes-translation", "test", image_size=size, shapes_size=300)
    assert train.centers[:, 0].max() <= size / 3 + 1e-6
    assert test.centers[:, 0].max() > 2 * size / 3  # test objects are anywhere
    loaded = data.load_arrays("shapes-translation", "train", image_size=size, shapes_size=300)
    assert loaded.centers[:, 0].max() <= size / 3 + 1e-6


def test_shapes_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"num_examples must be a positive integer, got 0"):
        data.make_shapes(0)
    with pytest.raises(ValueError, match=r"image_size must be an integer of at least 16, got 8"):
        data.make_shapes(4, image_size=8)
    with pytest.raises(ValueError, match=r"region must be 'anywhere', 'left' or 'right', got 'top'"):
        data.make_shapes(4, region="top")


def test_stratified_subset_takes_n_per_class_reproducibly():
    labels = np.repeat(np.arange(4), 25)
    first = data.stratified_subset(labels, 7, seed=1)
    assert np.bincount(labels[first]).tolist() == [7, 7, 7, 7]
    np.testing.assert_array_equal(first, data.stratified_subset(labels, 7, seed=1))
    assert not np.array_equal(first, data.stratified_subset(labels, 7, seed=2))
    with pytest.raises(ValueError, match=r"Class 0 has only 25 examples; cannot draw 30 per class"):
        data.stratified_subset(labels, 30)


# --------------------------------------------------------------------------- #
# Folders of images
# --------------------------------------------------------------------------- #
def _write_images(folder, count, colour, fmt="JPEG"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.full((12, 10, 3), colour, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.{'jpg' if fmt == 'JPEG' else 'png'}", format=fmt)


def test_folder_skips_and_counts_corrupt_and_non_image_files(tmp_path):
    for split in ("val", "test"):
        _write_images(tmp_path / split / "cats", 1, (200, 30, 30))
        _write_images(tmp_path / split / "dogs", 1, (30, 30, 200))
    train = tmp_path / "train"
    _write_images(train / "cats", 4, (200, 30, 30))
    _write_images(train / "dogs", 5, (30, 30, 200), fmt="PNG")
    good = (train / "cats" / "0.jpg").read_bytes()
    (train / "cats" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (train / "dogs" / "notes.txt").write_text("not an image")
    (train / "dogs" / "fake.png").write_bytes(b"\x89PNG but not really")
    with pytest.warns(UserWarning, match=r"Skipped 3 file\(s\) in .*train that are not decodable images"):
        dataset, info = data.load(f"folder:{tmp_path}", "train", image_size=8)
    items = list(dataset.as_numpy_iterator())
    assert info.class_names == ("cats", "dogs")
    assert info.skipped_files == 3 and len(items) == info.num_examples == 9
    for image, label in items:
        assert image.shape == (8, 8, 3) and image.dtype == np.uint8
        assert image[..., 0].mean() > 150 if label == 0 else image[..., 2].mean() > 150
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clean splits warn about nothing
        assert len(data.load_arrays(f"folder:{tmp_path}", "validation")) == 2


def test_flat_folder_splits_are_disjoint_and_cover_every_image(tmp_path):
    _write_images(tmp_path / "a", 30, (255, 0, 0), fmt="PNG")
    _write_images(tmp_path / "b", 30, (0, 255, 0), fmt="PNG")
    sizes = {}
    for split in data.SPLITS:
        sizes[split] = len(data.load_arrays(f"folder:{tmp_path}", split, split_seed=5))
    assert sum(sizes.values()) == 60
    assert sizes["train"] > sizes["validation"] and sizes["train"] > sizes["test"]
    again = len(data.load_arrays(f"folder:{tmp_path}", "test", split_seed=5))
    assert again == sizes["test"]


def test_folder_with_split_folders_but_no_test_is_refused_not_read_as_classes(tmp_path):
    for split in ("train", "val"):
        _write_images(tmp_path / split / "cats", 1, (200, 30, 30))
        _write_images(tmp_path / split / "dogs", 1, (30, 30, 200))
    with pytest.raises(ValueError, match=r"has split folders \['train', 'val'\] but not both train/ and test/"):
        data.load(f"folder:{tmp_path}", "train")


def test_presplit_folder_uses_train_and_test_and_carves_validation(tmp_path):
    for split, count in (("train", 40), ("test", 6)):
        _write_images(tmp_path / split / "x", count, (10, 10, 10), fmt="PNG")
        _write_images(tmp_path / split / "y", count, (240, 240, 240), fmt="PNG")
    test = data.load_arrays(f"folder:{tmp_path}", "test")
    train = data.load_arrays(f"folder:{tmp_path}", "train")
    validation = data.load_arrays(f"folder:{tmp_path}", "validation")
    assert len(test) == 12
    assert len(train) + len(validation) == 80 and 0 < len(validation) < 20


def test_missing_folder_and_unknown_names_are_clear(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match=r"does not exist.*one subfolder per class"):
        data.load(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'.*folder:PATH"):
        data.load("imagenet")
    with pytest.raises(ValueError, match=r"Unknown split 'dev'"):
        data.load("shapes", "dev")


# --------------------------------------------------------------------------- #
# tensorflow-datasets, offline
# --------------------------------------------------------------------------- #
def test_cifar10_through_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        dataset, info = data.load("cifar10", "test")
        arrays = data.load_arrays("cifar10", "test")
    assert info.num_classes == 10 and len(info.class_names) == 10  # the mock has no label names offline
    assert arrays.images.shape[1:] == (32, 32, 3) and arrays.images.dtype == np.uint8
    assert len(arrays) == 12


def test_cats_vs_dogs_split_is_seeded_disjoint_and_complete():
    counts = {}
    with tfds.testing.mock_data(num_examples=40):
        for split in data.SPLITS:
            dataset, info = data.load("cats_vs_dogs", split, image_size=16, split_seed=0)
            items = list(dataset.as_numpy_iterator())
            assert len(items) == info.num_examples
            assert all(x.shape == (16, 16, 3) for x, _ in items)
            counts[split] = info.num_examples
    assert sum(counts.values()) == 40
    assert counts["train"] > counts["test"]


def _encoded_png(size=(20, 24)):
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.full((*size, 3), 120, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tfds_decodes_only_the_images_it_keeps():
    # cats_vs_dogs has one upstream split of 23,262 JPEGs: the test split (and a 4-image training
    # subset) must not decode the others. Every image outside them is undecodable here, so
    # decoding one of them fails the read.
    import tensorflow as tf

    names = [f"PetImages/{'Cat' if i % 2 else 'Dog'}/{i}.jpg" for i in range(60)]
    splits = np.array([data._split_of(data._hash_fraction(n, 0)) for n in names])
    labels = np.arange(60) % 2
    subset = np.flatnonzero(splits == "train")[data.stratified_sample(labels[splits == "train"], 4, seed=0)]
    readable = (splits == "test") | np.isin(np.arange(60), subset)

    def as_dataset(self, *args, **kwargs):
        images = [_encoded_png() if ok else b"not an image" for ok in readable]
        return tf.data.Dataset.from_tensor_slices({"image": images, "image/filename": names, "label": labels})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        test, test_info = data.load("cats_vs_dogs", "test", image_size=16)
        train, train_info = data.load("cats_vs_dogs", "train", image_size=16, max_examples=4)
        test_items, train_items = list(test.as_numpy_iterator()), list(train.as_numpy_iterator())
    assert len(test_items) == test_info.num_examples == (splits == "test").sum() > 0
    assert len(train_items) == train_info.num_examples == 4
    assert all(x.shape == (16, 16, 3) and (x == 120).all() for x, _ in test_items + train_items)


def test_cached_stream_decodes_each_image_once_across_pipelines(tmp_path):
    # The probe's pass and the fine-tuning epochs are separate pipelines over one stream: with the
    # cache, the JPEG files are read once; without it, every pass reads them again.
    import tensorflow as tf

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.fromarray(np.full((20, 24, 3), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.jpg")
    reads = []
    original = tf.io.read_file

    def counting_read(path):
        return tf.py_function(lambda p: reads.append(p) or original(p), [path], tf.string)

    def passes(limit_gib):
        reads.clear()
        stream, info = data.load(f"folder:{tmp_path}", "train", image_size=8)
        stream, size = data.cache_decoded(stream, info.num_examples, 8, limit_gib)
        probe = data.make_pipeline(stream, 4, num_classes=2, rescale=1.0)
        epochs = data.make_pipeline(stream, 2, num_classes=2, training=True, repeat=True, seed=0)
        seen = sum(len(x) for x, _ in probe)
        iterator = iter(epochs)
        for _ in range(3 * info.num_examples // 2):  # three more passes
            next(iterator)
        return info.num_examples, seen, size, len(reads)

    import unittest.mock

    with unittest.mock.patch.object(tf.io, "read_file", counting_read):
        n, seen, size, cached_reads = passes(1.0)
        _, _, no_size, uncached_reads = passes(0)
    assert seen == n > 0 and size == n * 8 * 8 * 3 and no_size == 0
    assert cached_reads == n  # one read per file, however many passes follow
    assert uncached_reads >= 4 * n - 2  # every pass reads them again (the last batch may be in flight)


def test_cache_decoded_refuses_a_bad_limit_or_unknown_size():
    stream, info = data.load("shapes", "test", image_size=16)
    with pytest.raises(ValueError, match=r"limit_gib must be a number of GiB >= 0.*-1"):
        data.cache_decoded(stream, info.num_examples, 16, -1)
    with pytest.raises(ValueError, match=r"limit_gib must be a number of GiB >= 0.*'4'"):
        data.cache_decoded(stream, info.num_examples, 16, "4")
    with pytest.raises(ValueError, match=r"image_size=S.*None"):
        data.cache_decoded(stream, info.num_examples, None)
    assert data.cache_decoded(stream, info.num_examples, 16, limit_gib=1e-6)[1] == 0  # over the limit: not cached


def test_failed_download_names_dataset_and_explains_local_copy(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection: [Errno 101] Network is unreachable")

    monkeypatch.setattr(tfds, "load", unreachable)
    with pytest.raises(data.DatasetUnavailableError) as error:
        data.load("cifar100", "train", data_dir="/tmp/my_tfds")
    message = str(error.value)
    assert "'cifar100'" in message and "network was unreachable" in message
    assert "/tmp/my_tfds/cifar100" in message and "folder:PATH" in message


def test_non_network_tfds_errors_are_not_disguised(monkeypatch):
    def bad_split(*args, **kwargs):
        raise KeyError("bad split")

    monkeypatch.setattr(tfds, "load", bad_split)
    with pytest.raises(KeyError):
        data.load("cifar10", "train")


# --------------------------------------------------------------------------- #
# Pipeline and augmentation
# --------------------------------------------------------------------------- #
def test_pipeline_rescales_normalizes_and_one_hot_encodes():
    shapes = data.make_shapes(10, image_size=16, seed=0)
    batches = data.make_pipeline(shapes, batch_size=4, rescale=1 / 255.0, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    images, labels = next(iter(batches.as_numpy_iterator()))
    expected = (shapes.images[:4] / 255.0 - 0.5) / 0.25
    np.testing.assert_allclose(images, expected, atol=1e-5)
    np.testing.assert_array_equal(labels.argmax(1), shapes.labels[:4])
    assert labels.shape == (4, 6) and images.dtype == np.float32
    assert sum(len(y) for _, y in batches.as_numpy_iterator()) == 10  # nothing dropped in evaluation


FIRST_BATCH_SCRIPT = """
import hashlib, keras
from vitkeras import data
keras.utils.set_random_seed(1)
shapes = data.make_shapes(32, image_size=16, seed=0)
batches = data.make_pipeline(shapes, 8, training=True, augmentation="basic", seed=1)
images, labels = next(iter(batches.as_numpy_iterator()))
print("HASH", hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest())
"""


def test_seeded_training_pipeline_is_reproducible_run_to_run():
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
    hashes = []
    for _ in range(2):  # two fresh processes: a seeded run is reproducible on one backend
        result = subprocess.run([sys.executable, "-c", FIRST_BATCH_SCRIPT], capture_output=True, text=True, env=env,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        hashes.append(result.stdout.split("HASH")[1].strip())
    assert hashes[0] == hashes[1]


def test_a_repeated_training_stream_has_full_batches_of_unknown_static_size():
    """One traced training step serves every subset size: the batch dimension is left unknown."""
    shapes = data.make_shapes(10, image_size=16, seed=0)  # 10 = 2 full batches of 4 and a remainder of 2
    stream = data.make_pipeline(shapes, 4, training=True, augmentation="none", repeat=True, seed=0)
    assert stream.element_spec[0].shape.as_list() == [None, 16, 16, 3]
    assert [int(images.shape[0]) for images, _ in stream.take(7)] == [4] * 7  # a repeated stream has no remainder
    once = data.make_pipeline(shapes, 4, training=True, augmentation="none", seed=0)
    assert once.element_spec[0].shape.as_list() == [4, 16, 16, 3]  # one pass drops its partial batch
    assert sum(1 for _ in once) == 2


def test_training_pipeline_augments():
    shapes = data.make_shapes(32, image_size=16, seed=0)
    plain = data.make_pipeline(shapes, 8, training=True, augmentation="none", seed=1)
    images, _ = next(iter(plain.as_numpy_iterator()))
    index = [np.flatnonzero(np.isclose(shapes.images / 255.0, im, atol=1e-6).all(axis=(1, 2, 3))) for im in images]
    assert all(len(i) == 1 for i in index)  # unaugmented: every image is one of the originals
    augmented = data.make_pipeline(shapes, 8, training=True, augmentation="basic", seed=1)
    images, _ = next(iter(augmented.as_numpy_iterator()))
    matches = [np.flatnonzero(np.isclose(shapes.images / 255.0, im, atol=1e-6).all(axis=(1, 2, 3))) for im in images]
    assert sum(len(i) == 0 for i in matches) > 0  # augmented: some images were changed


def test_mixup_gives_soft_labels_that_sum_to_one():
    shapes = data.make_shapes(16, image_size=16, seed=0)
    batches = data.make_pipeline(shapes, 8, training=True, mixup=0.8, seed=0)
    _, labels = next(iter(batches.as_numpy_iterator()))
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-5)
    assert (labels.max(1) < 1.0 - 1e-3).any()


def test_strong_augmentation_uses_randaugment_and_rejects_unknown():
    names = [layer.__class__.__name__ for layer in data.make_augmentation("strong")]
    assert names == ["RandomFlip", "RandomTranslation", "RandAugment"]
    assert data.make_augmentation("none") == []
    with pytest.raises(ValueError, match=r"augmentation must be one of \['none', 'translate', 'basic', 'strong'\], "
                       r"got 'max'"):
        data.make_augmentation("max")


def test_translate_augmentation_never_mirrors_and_basic_does():
    """shapes-translation trains on the left third: "translate" must keep what is left on the left."""
    images = np.zeros((64, 16, 16, 3), np.uint8)
    images[:, :, :6] = 255  # (B, H, W, C): bright left, dark right
    half_left = data.ArrayData(images, np.zeros(64, np.int32), ("bright left",))

    def left_brighter(augmentation):
        batch, _ = next(iter(data.make_pipeline(half_left, 64, training=True, augmentation=augmentation, seed=0)))
        batch = np.asarray(batch)
        return batch[:, :, :4].mean(axis=(1, 2, 3)) > batch[:, :, -4:].mean(axis=(1, 2, 3))  # (B,)

    assert left_brighter("translate").all()
    assert not left_brighter("basic").all()  # about half the images flipped


def test_stratified_sample_holds_every_class_in_proportion_and_repeats_with_its_seed():
    labels = np.repeat([0, 1, 2], [50, 30, 20])  # sorted by class, like a folder
    sample = data.stratified_sample(labels, 10, seed=3)
    assert np.bincount(labels[sample]).tolist() == [5, 3, 2]
    np.testing.assert_array_equal(sample, data.stratified_sample(labels, 10, seed=3))
    assert not np.array_equal(sample, data.stratified_sample(labels, 10, seed=4))
    assert np.bincount(labels[data.stratified_sample(labels, 3, seed=0)]).tolist() == [1, 1, 1]
    assert len(np.unique(data.stratified_sample(labels, 100, seed=0))) == 100
    with pytest.raises(ValueError, match=r"A subset of 2 example\(s\) cannot hold all 3 classes of the split; allowed: 3 to 100"):
        data.stratified_sample(labels, 2)
    with pytest.raises(ValueError, match=r"larger than the split \(100 examples\)"):
        data.stratified_sample(labels, 101)


def test_small_subset_of_a_class_sorted_folder_holds_every_class(tmp_path):
    from PIL import Image

    for name in ("a_cats", "b_dogs", "c_fish"):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "test" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "test" / name / "0.png")
    dataset, info = data.load(f"folder:{tmp_path}", "train", max_examples=3, subset_seed=0)
    labels = [int(y) for _, y in dataset.as_numpy_iterator()]
    assert sorted(labels) == [0, 1, 2] and info.num_examples == 3 and sorted(info.labels.tolist()) == [0, 1, 2]
    again, _ = data.load(f"folder:{tmp_path}", "train", max_examples=3, subset_seed=0)
    assert [x.tolist() for x, _ in again.as_numpy_iterator()] == [x.tolist() for x, _ in dataset.as_numpy_iterator()]


def test_a_class_selection_keeps_those_classes_relabelled_in_the_order_given(tmp_path):
    from PIL import Image

    for value, name in enumerate(("bird", "cat", "dog")):
        (tmp_path / "train" / name).mkdir(parents=True)
        (tmp_path / "test" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 50 * value, np.uint8)).save(tmp_path / "test" / name / f"{i}.png")
    stream, info = data.load(f"folder:{tmp_path}[dog,bird]", "test")
    pairs = sorted((int(x[0, 0, 0]), int(y)) for x, y in stream.as_numpy_iterator())
    assert info.class_names == ("dog", "bird") and info.num_examples == 8
    assert set(pairs) == {(100, 0), (0, 1)}  # dog (pixel 100) is 0, bird (pixel 0) is 1, no cat
    arrays = data.load_arrays(f"folder:{tmp_path}[dog,bird]", "test")
    assert arrays.class_names == ("dog", "bird") and sorted(np.bincount(arrays.labels).tolist()) == [4, 4]
    with pytest.raises(ValueError, match=r"has no class\(es\) \['fish'\]; allowed: \['bird', 'cat', 'dog'\]"):
        data.load(f"folder:{tmp_path}[dog,fish]", "test")


def test_patch_permutation_moves_the_same_patches_in_every_image_and_is_invertible():
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype("uint8")
    order = data.patch_permutation(16, 4, seed=0)
    assert sorted(order.tolist()) == list(range(16)) and order.tolist() != list(range(16))
    shuffled = data.permute_patches(images, 4, order)
    for position, source in enumerate(order):  # the same move in every image
        row, col, source_row, source_col = position // 4, position % 4, source // 4, source % 4
        np.testing.assert_array_equal(shuffled[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4],
                                      images[:, 4 * source_row:4 * source_row + 4, 4 * source_col:4 * source_col + 4])
    np.testing.assert_array_equal(data.permute_patches(shuffled, 4, np.argsort(order)), images)
    np.testing.assert_array_equal(data.patch_permutation(16, 4, seed=0), order)  # fixed by its seed
    # The pipeline shuffles with the same order (train, validation and test alike).
    batches = data.make_pipeline(data.ArrayData(images, np.zeros(3, "int32"), ("a",)), 3, rescale=1.0,
                                 patch_order=(4, order))
    np.testing.assert_array_equal(next(iter(batches))[0].numpy(), shuffled.astype("float32"))
    with pytest.raises(ValueError, match="not a multiple of patch_size 5"):
        data.patch_permutation(16, 5)
    with pytest.raises(ValueError, match="must be a permutation of range"):
        data.permute_patches(images, 4, [0, 1, 2])


def test_a_class_selection_is_filtered_without_autograph_warnings():
    # Two lambdas of the same arguments on one line made AutoGraph give up on them, with a
    # warning (and a traceback) on every class-list dataset streamed through tf.data.
    records = []
    catch = logging.Handler()
    catch.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(catch)
    try:
        dataset, info = data.load("shapes[disc,square]", "test")
        labels = [int(label) for _, label in dataset.as_numpy_iterator()]
    finally:
        logger.removeHandler(catch)
    assert info.class_names == ("disc", "square") and len(labels) == info.num_examples == 800
    assert labels == info.labels.tolist() and set(labels) == {0, 1}
    assert not [record for record in records if "AutoGraph" in record.getMessage()]


def test_shapes_size_is_generated_before_a_class_selection_keeps_some():
    everything = data.load_arrays("shapes", "test", shapes_size=60)
    chosen = data.load_arrays("shapes[square,disc]", "test", shapes_size=60)  # was: the default 2,400 ignored it
    squares, discs = everything.labels == 2, everything.labels == 0
    assert len(chosen) == 20 and chosen.class_names == ("square", "disc")
    np.testing.assert_array_equal(chosen.images, everything.images[squares | discs])
    np.testing.assert_array_equal(chosen.labels, np.where(everything.labels[squares | discs] == 2, 0, 1))
    np.testing.assert_array_equal(chosen.centers, everything.centers[squares | discs])
