"""What augmenting in the train step costs the device (issue 15, item 4): `finetune --augment-on device`.

On a host with few CPU cores, flip and translation in the tf.data pipeline limit
fine-tuning to a few hundred images a second (`pipeline_throughput.py`);
`training.Augmented` moves them into the train step, onto the model's device,
and leaves the pipeline only batching. This script measures the other side of
that trade: one fine-tuning training step (`train_on_batch`, the lp_ft
recipe's optimizer) of a DINOv2-S/14-sized model with random weights written
in the real checkpoint format, with and without the augmentation layers in the
step, on batches already in memory, timed in turns (median of `--rounds`).
Runs on any Keras backend and needs no TensorFlow with JAX or PyTorch (the GPU
machine has none).

    KERAS_BACKEND=jax python benchmarks/augment_on_device.py --image-size 112 \\
        --out benchmarks/results/augment_on_device/cpu_112_jax.json
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from vitkeras import pretrained, training  # noqa: E402
from vitkeras.experiments import machine_description  # noqa: E402


def step_seconds(model, images, labels, steps):
    """Seconds per `train_on_batch` call, over `steps` calls."""
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=112, help="a multiple of 14 (224: the GPU path)")
    parser.add_argument("--batch", type=int, default=32, help="lp_ft's batch size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (args.batch, args.image_size, args.image_size, 3)).astype("float32")
    labels = np.eye(2, dtype="float32")[rng.integers(0, 2, args.batch)]
    recipe = training.get_recipe("lp_ft")
    with tempfile.TemporaryDirectory() as root:
        checkpoint = pretrained.save_random_checkpoint(root, "dinov2", hidden_size=384, num_hidden_layers=12,
                                                       num_attention_heads=6, image_size=args.image_size,
                                                       patch_size=14)
        models = {}
        for name in ("augmentation in the pipeline (step without it)", "augmentation in the step"):
            model = pretrained.load_pretrained(checkpoint, image_size=args.image_size, num_classes=2, seed=0)
            if name == "augmentation in the step":
                model = training.Augmented(model, recipe.augmentation, seed=0)
            training.compile_model(model, recipe, total_steps=1000)
            model.train_on_batch(images, labels)  # compile and warm up
            models[name] = model
    samples = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            samples[name].append(step_seconds(model, images, labels, args.steps))
    results = {name: {"ms_per_step": round(statistics.median(s) * 1000, 1),
                      "images_per_s": round(args.batch / statistics.median(s), 1),
                      "spread_ms": [round(min(s) * 1000, 1), round(max(s) * 1000, 1)]}
               for name, s in samples.items()}
    plain, augmented = (results[name]["ms_per_step"] for name in models)
    report = {"results": results, "augmentation_ms_per_step": round(augmented - plain, 1),
              "augmentation_share": round((augmented - plain) / augmented, 3),
              "image_size": args.image_size, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
              "device": training.accelerator()[0], "machine": machine_description(), "keras": keras.__version__,
              "date": time.strftime("%Y-%m-%d"),
              "command": f"KERAS_BACKEND={keras.config.backend()} python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
    for name, row in results.items():
        print(f"{name:<50} {row['ms_per_step']:>9.1f} ms a step  {row['images_per_s']:>8.1f} img/s  "
              f"(min {row['spread_ms'][0]}, max {row['spread_ms'][1]})")
    print(f"augmentation in the step: {report['augmentation_ms_per_step']} ms a step "
          f"({report['augmentation_share']:.1%} of it)")
    if args.out:
        training.write_json_atomic(args.out, report)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
