"""Test accuracy on CIFAR-10 after a fixed wall-clock training budget.

Compares, on the same data and the same budget:

- "vitkeras": `build_vit` (Micro/4 at 32x32 input) with the vitkeras
  from-scratch recipe (AdamW with decay exclusions, warm-up + cosine, label
  smoothing, clipping, flip + translate augmentation);
- "keras_example": the keras.io example's model (resize to 72, patch 6,
  Flatten + 2048/1024 head) with its recipe (AdamW 1e-3, weight decay 1e-4,
  constant learning rate, in-model augmentation);
- "cnn": the vitkeras ResNet-style baseline with the vitkeras recipe.

Each run measures its step time on a few warm-up steps (not counted), sizes
its learning-rate schedule to the number of steps that fit the budget, trains
until the budget is spent, then evaluates on the test split.

Usage (the CIFAR-10 copy in ../shared/datasets, unpacked to /tmp/data):

    python benchmarks/accuracy_at_budget.py --data-dir /tmp/data/cifar10 --minutes 8 --out benchmarks/results/accuracy_at_budget.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkeras  # noqa: E402
from vitkeras import data, experiments, training  # noqa: E402
from vitkeras.keras_example import build_keras_example_vit  # noqa: E402
from vitkeras.training import TimeBudget  # noqa: E402


def _build(name, train_arrays, num_classes, seed):
    keras.utils.set_random_seed(seed)
    if name == "vitkeras":
        return vitkeras.build_vit("Micro/4", image_size=32, num_classes=num_classes, seed=seed), "scratch", True
    if name == "cnn":
        target = vitkeras.build_vit("Micro/4", image_size=32, num_classes=num_classes).count_params()
        width = experiments.matched_cnn_width(target, 32, num_classes)
        return vitkeras.build_cnn(32, num_classes, width=width, seed=seed), "scratch", True
    normalization = keras.layers.Normalization()
    normalization.adapt(train_arrays.images[:5000].astype("float32") / 255.0)
    return build_keras_example_vit(32, num_classes, normalization=normalization), "keras_example", False


def run(name, train_arrays, test_arrays, seconds, seed=0, log=print):
    keras.backend.clear_session()
    model, recipe_name, pipeline_augments = _build(name, train_arrays, train_arrays.num_classes, seed)
    recipe = training.get_recipe(recipe_name)
    batches = data.make_pipeline(
        train_arrays, recipe.batch_size, training=True,
        augmentation=recipe.augmentation if pipeline_augments else "none", seed=seed, repeat=True,
    )
    test_batches = data.make_pipeline(test_arrays, 500)
    steps_per_epoch = len(train_arrays) // recipe.batch_size
    # Calibrate the step time on a throw-away copy of the optimizer state (compile + 10 steps).
    training.compile_model(model, recipe, total_steps=1000)
    model.fit(batches, epochs=1, steps_per_epoch=3, verbose=0)
    start = time.perf_counter()
    model.fit(batches, epochs=1, steps_per_epoch=10, verbose=0)
    step_time = (time.perf_counter() - start) / 10
    total_steps = max(int(seconds / step_time), 10)
    # Fresh weights and optimizer, schedule sized to the budget.
    model, _, _ = _build(name, train_arrays, train_arrays.num_classes, seed)
    training.compile_model(model, recipe, total_steps=total_steps)
    budget = TimeBudget(seconds)
    epochs = -(-total_steps // steps_per_epoch) + 1
    start = time.perf_counter()
    model.fit(batches, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=[budget], verbose=0)
    trained = time.perf_counter() - start
    accuracy = float(model.evaluate(test_batches, verbose=0, return_dict=True)["accuracy"])
    record = {
        "model": name,
        "recipe": recipe.name,
        "parameters": model.count_params(),
        "budget_seconds": seconds,
        "trained_seconds": round(trained, 1),
        "steps": budget.steps,
        "planned_steps": total_steps,
        "epochs": round(budget.steps * recipe.batch_size / len(train_arrays), 2),
        "images_per_second": round(budget.steps * recipe.batch_size / trained, 1),
        "test_accuracy": accuracy,
        "seed": seed,
    }
    log(json.dumps(record))
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with train/ and test/ class folders (CIFAR-10 copy)")
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per model (default 8)")
    parser.add_argument("--models", nargs="+", default=["vitkeras", "keras_example", "cnn"],
                        choices=["vitkeras", "keras_example", "cnn"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/accuracy_at_budget.json")
    args = parser.parse_args(argv)
    train_arrays = data.load_arrays(f"folder:{args.data_dir}", "train")
    test_arrays = data.load_arrays(f"folder:{args.data_dir}", "test")
    print(f"train {len(train_arrays)} images, test {len(test_arrays)}; budget {args.minutes} min per model")
    records = [run(name, train_arrays, test_arrays, args.minutes * 60, args.seed) for name in args.models]
    result = {
        "command": "python " + " ".join(sys.argv),
        "data": args.data_dir,
        "machine": experiments.machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "results": records,
    }
    training.write_json_atomic(args.out, result)
    print(f"{'model':<14} {'params':>10} {'steps':>6} {'epochs':>6} {'img/s':>7} {'test acc':>8}")
    for r in records:
        print(f"{r['model']:<14} {r['parameters']:>10,} {r['steps']:>6} {r['epochs']:>6} {r['images_per_second']:>7} {r['test_accuracy']:>8.4f}")


if __name__ == "__main__":
    main()
