"""Images per second the course's input pipelines deliver on this machine's CPU cores (issue 15, item 4).

The GPU side of the question (does the pipeline keep up with the model?) needs the
model's images per second on the GPU; this script measures the other side, the
host: `vitkeras.data.make_pipeline` with each notebook's default training
settings, iterated without a model, after a warm-up.

- "02 CIFAR-10 (scratch)": 50,000 32x32 uint8 images in memory (random pixels of
  CIFAR's shape; flips and translations cost the same whatever the pixels),
  batch 128, the scratch recipe's "basic" augmentation (flip + translation).
- "03 shapes (data-efficiency)": the embedded shapes training pool at 16 px,
  batch 256, "basic" augmentation.
- "04 cats vs dogs (fine-tune)": a folder of JPEG files of cats_vs_dogs' typical
  size (500x375, written here with PIL), read through `vitkeras.data.load`
  ("folder:PATH", decoded and resized to 224 px every epoch, as tfds's
  cats_vs_dogs is), batch 32, "basic" augmentation, [0, 255] pixels.
- "04 cats vs dogs, cached": the same stream as `finetune` reads it
  (`vitkeras.data.cache_decoded`), timed after the one pass that fills the cache
  (LP-FT's linear probe): the rate of the fine-tuning epochs.
- "04 cats vs dogs, cached, augmentation on the device": the same without flip and
  translation in the pipeline, as `finetune --augment-on device` (the default on a
  GPU with JAX or PyTorch) reads it: the augmentation runs in the train step instead
  (`training.Augmented`; its cost there: `augment_on_device.py`). The difference to
  the row above is what the augmentation costs the host (a sequential map, so that
  seeded runs repeat).

Usage:

    python benchmarks/pipeline_throughput.py --out benchmarks/results/pipeline_throughput.json
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkeras import data as vdata  # noqa: E402
from vitkeras.experiments import machine_description  # noqa: E402


def images_per_second(batches, seconds, warmup=3):
    """Images per second of an endless batch stream, iterated for about `seconds` after `warmup` batches."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        images, _ = next(iterator)
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def write_jpegs(root, per_class, size=(500, 375), seed=0):
    """`per_class` smooth random JPEG images in root/cat and root/dog (quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in ("cat", "dog"):
        (Path(root) / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # upsampled: JPEG-like content, not noise
            Image.fromarray(small).resize(size, Image.BILINEAR).save(Path(root) / name / f"{i}.jpg", quality=90)


def cases(jpeg_root):
    cifar = vdata.ArrayData(np.random.default_rng(0).integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8),
                            np.arange(50_000, dtype="int32") % 10, tuple(str(i) for i in range(10)))
    yield "02 CIFAR-10 (scratch)", 128, lambda: vdata.make_pipeline(
        cifar, 128, training=True, augmentation="basic", repeat=True)
    shapes = vdata.load_arrays("shapes", "train", image_size=16)
    yield "03 shapes (data-efficiency)", 256, lambda: vdata.make_pipeline(
        shapes, 256, training=True, augmentation="basic", repeat=True)
    folder, info = vdata.load(f"folder:{jpeg_root}", "train", image_size=224)
    yield "04 cats vs dogs (fine-tune)", 32, lambda: vdata.make_pipeline(
        folder, 32, num_classes=2, training=True, augmentation="basic", rescale=1.0, repeat=True)
    cached, _ = vdata.cache_decoded(folder, info.num_examples, 224)

    def filled(augmentation):
        for _ in vdata.make_pipeline(cached, 64, num_classes=2, rescale=1.0):  # the probe's pass
            pass
        return vdata.make_pipeline(cached, 32, num_classes=2, training=True, augmentation=augmentation, rescale=1.0,
                                   repeat=True)

    yield "04 cats vs dogs, cached", 32, lambda: filled("basic")
    yield "04 cats vs dogs, cached, augmentation on the device", 32, lambda: filled("none")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per pipeline and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all pipelines (median reported)")
    parser.add_argument("--jpegs", type=int, default=600, help="JPEG files per class for the cats-vs-dogs case")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.jpegs)
        pipelines = [(name, batch, make()) for name, batch, make in cases(root)]
        timings = {name: [] for name, _, _ in pipelines}
        for _ in range(args.rounds):  # in turns, so a busy moment of the machine hits every pipeline
            for name, _, batches in pipelines:
                timings[name].append(images_per_second(batches, args.seconds))
    results = [{"pipeline": name, "batch": batch, "images_per_s": float(np.median(timings[name])),
                "spread": [min(timings[name]), max(timings[name])]} for name, batch, _ in pipelines]
    for row in results:
        print(f"{row['pipeline']:<30} batch {row['batch']:>4}  {row['images_per_s']:>9,.0f} img/s  "
              f"(min {row['spread'][0]:,.0f}, max {row['spread'][1]:,.0f})")
    import tensorflow as tf

    report = {"results": results, "machine": machine_description(), "cpu_cores": os.cpu_count(),
              "tensorflow": tf.__version__, "date": time.strftime("%Y-%m-%d"),
              "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
              "seconds": args.seconds, "rounds": args.rounds, "jpegs_per_class": args.jpegs}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
