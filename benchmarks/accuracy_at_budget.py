"""Test accuracy on CIFAR-10 after a fixed wall-clock training budget.

Compares, on the same data and the same budget:

- "vitkeras": `build_vit` (Micro/4 at 32x32 input unless `--preset`; other
  ViTConfig fields with `--vit-option`, e.g. pooling=gap) with the vitkeras
  from-scratch recipe (AdamW with decay exclusions, warm-up + cosine, label
  smoothing, clipping, flip + translate augmentation; `--learning-rate`,
  `--batch-size`, `--augmentation`, `--label-smoothing` and `--weight-decay`
  change it for vitkeras and the CNN;
  `--jit-compile true` compiles every model's train step with XLA; with
  `--vit-option patch_dropout=R`, `--full-tokens-fraction F` trains the last
  F of the budget on every token);
- "keras_example": the keras.io example's model (resize to 72, patch 6,
  Flatten + 2048/1024 head) with its recipe (AdamW 1e-3, weight decay 1e-4,
  constant learning rate, in-model augmentation);
- "cnn": the vitkeras ResNet-style baseline with the vitkeras recipe.

Each run lays its recipe's learning-rate schedule (warm-up, cosine) over the
wall-clock budget rather than over a number of steps, trains until the budget
is spent (compilation counted), then evaluates on the test split and on the
validation split (for choosing settings without the test split). With `--curve-minutes`, it also measures test accuracy every so
many minutes of training (evaluation time not counted) and draws accuracy
against minutes next to the JSON file (`.png`).

Usage (the CIFAR-10 copy in ../shared/datasets, unpacked to /tmp/data):

    python benchmarks/accuracy_at_budget.py --data-dir /tmp/data/cifar10 --minutes 8 --out benchmarks/results/accuracy_at_budget.json

Results are written after every model, so an interrupted run keeps the finished ones.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkeras  # noqa: E402
from vitkeras import data, experiments, training  # noqa: E402
from vitkeras.keras_example import build_keras_example_vit  # noqa: E402

from throughput import matmul_peak  # noqa: E402  (benchmarks/throughput.py, beside this file)


def _build(name, train_arrays, num_classes, seed, preset="Micro/4", vit_options=None):
    keras.utils.set_random_seed(seed)
    if name == "vitkeras":
        model = vitkeras.build_vit(preset, image_size=32, num_classes=num_classes, seed=seed, **(vit_options or {}))
        return model, "scratch", True
    if name == "cnn":
        target = vitkeras.build_vit(preset, image_size=32, num_classes=num_classes).count_params()
        width = experiments.matched_cnn_width(target, 32, num_classes)
        return vitkeras.build_cnn(32, num_classes, width=width, seed=seed), "scratch", True
    normalization = keras.layers.Normalization()
    normalization.adapt(train_arrays.images[:5000].astype("float32") / 255.0)
    return build_keras_example_vit(32, num_classes, normalization=normalization), "keras_example", False


# The time budget is cut into this many ticks; the recipe's schedule (training.learning_rate_schedule)
# over that many "steps" gives the learning rate after a fraction of the budget.
SCHEDULE_TICKS = 10_000


def wall_clock_learning_rate(schedule, fraction):
    """The learning rate after `fraction` of the time budget, from a schedule over SCHEDULE_TICKS.

    Example:
    >>> schedule = training.learning_rate_schedule("scratch", SCHEDULE_TICKS)
    >>> [round(wall_clock_learning_rate(schedule, f) * 1000, 3) for f in (0.025, 0.05, 1.0, 1.5)]
    [0.5, 1.0, 0.0, 0.0]
    """
    if not callable(schedule):
        return float(schedule)  # a constant rate
    step = min(max(fraction, 0.0), 1.0) * SCHEDULE_TICKS
    return float(keras.ops.convert_to_numpy(schedule(step)))


class WallClockBudget(keras.callbacks.Callback):
    """Trains for `seconds` of training time with the recipe's schedule over that time; every `every`
    seconds it measures test accuracy (the evaluation's time is not counted as training).

    A schedule sized in steps from a calibration ends too early or too late when a shared machine
    changes speed (a 30-step calibration here was 23% off); a schedule in time always ends with the
    budget. `curve` holds (minutes of training, steps, test accuracy) points.
    """

    def __init__(self, seconds, recipe, test_batches, every=None, full_tokens_fraction=0.0):
        super().__init__()
        self.seconds, self.test_batches, self.every = seconds, test_batches, every
        self.schedule = training.learning_rate_schedule(recipe, SCHEDULE_TICKS)
        self.full_tokens_fraction = full_tokens_fraction
        self.full_tokens_from_step = None  # the first step with every token, once switched
        self.curve = []

    def on_train_begin(self, logs=None):
        self.trained, self.steps, self.next_point = 0.0, 0, self.every or float("inf")
        self.last = time.perf_counter()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate = wall_clock_learning_rate(self.schedule, self.trained / self.seconds)

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.trained += now - self.last
        self.steps += 1
        done = self.trained >= self.seconds
        if self.trained >= self.next_point and not done:
            self.point()
            self.next_point += self.every
        if (self.full_tokens_fraction and self.full_tokens_from_step is None
                and self.trained >= (1.0 - self.full_tokens_fraction) * self.seconds and not done):
            self.keep_every_token()
        if done:
            self.model.stop_training = True
        self.last = time.perf_counter()

    def keep_every_token(self):
        """Turns patch dropout off for the rest of the budget (FLIP's "unmasked tuning", Li et al. 2023).

        The model then trains on the token count it is tested on. The rate is read when the train
        step is traced, so the step is traced (and compiled) again; that time counts in the budget.
        """
        for layer in self.model.layers:
            if isinstance(layer, vitkeras.PatchDropout):
                layer.rate = 0.0
        self.model.make_train_function(force=True)
        self.full_tokens_from_step = self.steps
        print(f"  {self.trained / 60:5.1f} min, step {self.steps}: every token from here on", flush=True)

    def point(self):
        accuracy = float(self.model.evaluate(self.test_batches, verbose=0, return_dict=True)["accuracy"])
        self.curve.append((round(self.trained / 60, 2), self.steps, round(accuracy, 4)))
        print(f"  {self.trained / 60:5.1f} min, step {self.steps}: test accuracy {accuracy:.4f}", flush=True)


def run(name, train_arrays, test_arrays, seconds, seed=0, log=print, preset="Micro/4", vit_options=None,
        learning_rate=None, batch_size=None, augmentation=None, curve_minutes=None, validation_arrays=None,
        jit_compile="auto", label_smoothing=None, weight_decay=None, full_tokens_fraction=0.0):
    """Trains one model for `seconds` of training time (its schedule laid out over them) and returns its record.

    With `validation_arrays`, the record also holds the final validation accuracy (for choosing
    settings without looking at the test split). It always holds the final accuracy on 10,000
    training images drawn with seed 0, without augmentation (`train_accuracy_10k`).
    """
    keras.backend.clear_session()
    model, recipe_name, pipeline_augments = _build(
        name, train_arrays, train_arrays.num_classes, seed, preset=preset, vit_options=vit_options
    )
    recipe = training.get_recipe(recipe_name)
    changes = dict(learning_rate=learning_rate, batch_size=batch_size, augmentation=augmentation,
                   label_smoothing=label_smoothing, weight_decay=weight_decay)
    recipe = recipe.replace(**{k: v for k, v in changes.items() if v is not None and name != "keras_example"})
    batches = data.make_pipeline(
        train_arrays, recipe.batch_size, training=True,
        augmentation=recipe.augmentation if pipeline_augments else "none", seed=seed, repeat=True,
    )
    test_batches = data.make_pipeline(test_arrays, 500)
    steps_per_epoch = len(train_arrays) // recipe.batch_size
    # The optimizer gets a plain learning rate; WallClockBudget sets it before every batch.
    training.compile_model(model, recipe.replace(schedule="constant"), total_steps=1, jit_compile=jit_compile)
    if not any(isinstance(layer, vitkeras.PatchDropout) for layer in model.layers):
        full_tokens_fraction = 0.0  # only a model with patch dropout has tokens to give back
    budget = WallClockBudget(seconds, recipe, test_batches, curve_minutes and curve_minutes * 60,
                             full_tokens_fraction=full_tokens_fraction)
    model.fit(batches, epochs=1_000_000, steps_per_epoch=steps_per_epoch, callbacks=[budget], verbose=0)
    accuracy = float(model.evaluate(test_batches, verbose=0, return_dict=True)["accuracy"])
    budget.curve.append((round(budget.trained / 60, 2), budget.steps, round(accuracy, 4)))
    # Accuracy on (up to) 10,000 training images drawn with seed 0, without augmentation: next to
    # the test accuracy it tells under-fitting (both low) from over-fitting (training far above test).
    drawn = np.random.default_rng(0).permutation(len(train_arrays))[:10_000]
    train_subset = train_arrays.take(np.sort(drawn))
    train_accuracy = float(model.evaluate(data.make_pipeline(train_subset, 500), verbose=0, return_dict=True)["accuracy"])
    validation = None
    if validation_arrays is not None:
        validation_batches = data.make_pipeline(validation_arrays, 500)
        validation = float(model.evaluate(validation_batches, verbose=0, return_dict=True)["accuracy"])
    record = {
        "model": name,
        "recipe": recipe.name,
        "preset": preset if name != "keras_example" else None,
        "vit_options": (vit_options or {}) if name == "vitkeras" else None,
        "learning_rate": recipe.learning_rate,
        "schedule": f"{recipe.schedule} over the time budget",
        "batch_size": recipe.batch_size,
        "augmentation": recipe.augmentation,
        "label_smoothing": recipe.label_smoothing,
        "weight_decay": recipe.weight_decay,
        "full_tokens_fraction": full_tokens_fraction,
        "full_tokens_from_step": budget.full_tokens_from_step,
        "parameters": model.count_params(),
        "budget_seconds": seconds,
        "trained_seconds": round(budget.trained, 1),
        "steps": budget.steps,
        "epochs": round(budget.steps * recipe.batch_size / len(train_arrays), 2),
        "images_per_second": round(budget.steps * recipe.batch_size / budget.trained, 1),
        "jit_compile": jit_compile,
        # What Keras compiled with: it falls back to no XLA for a model XLA cannot take (the Keras
        # example's in-model augmentation), with only a warning.
        "jit_compile_used": bool(model.jit_compile),
        "test_accuracy": accuracy,
        "validation_accuracy": validation,
        "train_accuracy_10k": train_accuracy,
        "curve": [dict(minutes=m, steps=k, test_accuracy=a) for m, k, a in budget.curve],
        "seed": seed,
    }
    log(json.dumps(record))
    return record


def _option(text):
    """'KEY=VALUE' -> (key, value): an int, a float, true/false, none, or the string."""
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a ViTConfig field), got {text!r}")
    words = {"true": True, "false": False, "none": None}
    if value.lower() in words:
        return key, words[value.lower()]
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    return parse


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def plot_curves(result, path):
    """Test accuracy against minutes of training, one line per model (the budget's schedule each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for record in result["results"]:
        minutes = [point["minutes"] for point in record["curve"]]
        accuracy = [point["test_accuracy"] for point in record["curve"]]
        axis.plot(minutes, accuracy, marker="o", markersize=3,
                  label=f"{record['model']} ({record['parameters']:,} params)")
    machine = result["machine"]
    axis.set(xlabel="minutes of training", ylabel="CIFAR-10 test accuracy",
             title=f"{machine['processor']}, {machine['cpu_count']} cores ({result.get('matmul_gflops_float32')} "
                   f"GFLOP/s float32 matmul), {machine['backend']}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="folder with train/ and test/ class folders (CIFAR-10 copy)")
    parser.add_argument("--minutes", type=_positive(float), default=8.0, help="training budget per model (default 8)")
    parser.add_argument("--models", nargs="+", default=["vitkeras", "keras_example", "cnn"],
                        choices=["vitkeras", "keras_example", "cnn"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="Micro/4", help="ViT preset of vitkeras (and of the CNN's parameter match)")
    parser.add_argument("--vit-option", nargs="+", type=_option, default=[], metavar="KEY=VALUE",
                        help="ViTConfig fields of the vitkeras model, e.g. pooling=gap position_embedding=sincos2d")
    parser.add_argument("--learning-rate", type=_positive(float), help="peak learning rate (default: the recipe's)")
    parser.add_argument("--batch-size", type=_positive(int), help="batch size (default: the recipe's)")
    parser.add_argument("--augmentation", choices=data.AUGMENTATIONS, help="augmentation (default: the recipe's)")
    parser.add_argument("--label-smoothing", type=_fraction, help="label smoothing (default: the recipe's)")
    parser.add_argument("--weight-decay", type=_fraction, help="AdamW weight decay (default: the recipe's)")
    parser.add_argument("--full-tokens-fraction", type=_fraction, default=0.0,
                        help="with patch_dropout: train the last this fraction of the budget on every token "
                             "(default 0: patch dropout to the end)")
    parser.add_argument("--precision", default="float32", choices=experiments.PRECISIONS,
                        help="Keras dtype policy of every model (auto: float32 on CPU)")
    parser.add_argument("--jit-compile", default="auto", choices=["auto", "true", "false"],
                        help="XLA for every model's train step (auto: Keras's choice, off on TensorFlow)")
    parser.add_argument("--curve-minutes", type=_positive(float), help="measure test accuracy every this many minutes of "
                        "training (not counted in the budget)")
    parser.add_argument("--out", default="benchmarks/results/accuracy_at_budget.json")
    args = parser.parse_args(argv)
    try:  # a bad preset or ViTConfig field fails here, before minutes of data loading
        vitkeras.get_config(args.preset, **dict(args.vit_option))
    except ValueError as error:
        parser.error(str(error))
    if args.full_tokens_fraction and not dict(args.vit_option).get("patch_dropout"):
        parser.error(f"--full-tokens-fraction {args.full_tokens_fraction} needs patch dropout to turn off: "
                     "add --vit-option patch_dropout=RATE (a rate in (0, 1))")
    policy = training.choose_precision() if args.precision == "auto" else args.precision
    train_arrays = data.load_arrays(f"folder:{args.data_dir}", "train")
    test_arrays = data.load_arrays(f"folder:{args.data_dir}", "test")
    validation_arrays = data.load_arrays(f"folder:{args.data_dir}", "validation")
    print(f"train {len(train_arrays)} images, test {len(test_arrays)}; budget {args.minutes} min per model")
    options = dict(preset=args.preset, vit_options=dict(args.vit_option), learning_rate=args.learning_rate,
                   batch_size=args.batch_size, augmentation=args.augmentation, curve_minutes=args.curve_minutes,
                   jit_compile={"auto": "auto", "true": True, "false": False}[args.jit_compile],
                   label_smoothing=args.label_smoothing, weight_decay=args.weight_decay,
                   full_tokens_fraction=args.full_tokens_fraction)
    result = {
        "command": "python " + " ".join(sys.argv),
        "data": args.data_dir,
        "machine": experiments.machine_description(),
        # Machines of the same name differ by 2x and more: the matmul speed says how fast this one was.
        "matmul_gflops_float32": round(matmul_peak() / 1e9, 1),
        "date": time.strftime("%Y-%m-%d"),
        "results": [],
    }
    records = result["results"]
    for name in args.models:
        keras.config.set_dtype_policy(policy)
        records.append(run(name, train_arrays, test_arrays, args.minutes * 60, args.seed,
                           validation_arrays=validation_arrays, **options))
        records[-1]["precision"] = policy
        training.write_json_atomic(args.out, result)  # after every model: an interrupted run keeps the finished ones
    plot_curves(result, Path(args.out).with_suffix(".png"))
    print(f"{'model':<14} {'params':>10} {'steps':>6} {'epochs':>6} {'img/s':>7} {'test acc':>8}")
    for r in records:
        print(f"{r['model']:<14} {r['parameters']:>10,} {r['steps']:>6} {r['epochs']:>6} {r['images_per_second']:>7} {r['test_accuracy']:>8.4f}")


if __name__ == "__main__":
    main()
