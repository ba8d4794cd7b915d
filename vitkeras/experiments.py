"""The course's experiments: one config dataclass each, a function that runs it, results as JSON and plots.

Every experiment has one frozen dataclass whose fields are its options, each
default explained once, in its field's help text. The Python API, the command
line (`python -m vitkeras`, built from the same fields) and the notebooks all
build that config, so a new option is written in one place:

    config = DataEfficiencyConfig(sizes=(100, 300), seeds=(0, 1))
    summary = data_efficiency(config)          # or data_efficiency(sizes=(100, 300), seeds=(0, 1))

- `data_efficiency`: ViT vs CNN (vs a fine-tuned pretrained ViT) test accuracy
  as the training set grows (paper section 4.3, Figures 3 and 4). Results are
  written after every finished point, atomically, so an interrupted run keeps
  what it finished and a rerun with the same settings skips it.
- `train`: one model on one dataset.
- `finetune`: a pretrained checkpoint fine-tuned (or linear-probed) on a dataset.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from vitkeras import data as vdata
from vitkeras import models, pretrained, training

__all__ = [
    "MODELS",
    "DEFAULT_SIZES",
    "DataEfficiencyConfig",
    "TrainConfig",
    "FinetuneConfig",
    "build_model",
    "matched_cnn_width",
    "train_and_evaluate",
    "train_linear_probe",
    "fine_tune",
    "data_efficiency",
    "plot_data_efficiency",
    "summary_table",
    "train",
    "finetune",
    "machine_description",
]

MODELS = ("vit", "cnn", "hybrid", "pretrained")
# The default data-efficiency run (embedded dataset, 6 classes, 16x16 images): examples
# per class, epochs, and the fewest optimizer steps of a run (so that small subsets are
# trained to convergence, not stopped after a handful of steps). See benchmarks/RESULTS.md.
DEFAULT_SIZES = (100, 300, 1000, 3000)
DEFAULT_EPOCHS = 8
DEFAULT_MIN_STEPS = 400
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def machine_description():
    """Backend, versions, processor and core count: stored with every result."""
    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            names = [line.split(":", 1)[1].strip() for line in file if line.startswith("model name")]
        processor = names[0] if names else processor
    except OSError:
        pass
    return {
        "backend": keras.config.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "processor": processor,
        "cpu_count": os.cpu_count(),
        "device": training._accelerator()[0],
    }


def matched_cnn_width(target_params, image_size, num_classes, **cnn_kwargs):
    """The CNN width whose parameter count is closest to `target_params`.

    Parameters grow with width squared, so we solve from one probe and check neighbours.
    """
    def count(width):
        return models.build_cnn(image_size, num_classes, width=width, **cnn_kwargs).count_params()

    probe = 16
    width = max(2, int(round(probe * math.sqrt(target_params / count(probe)))))
    candidates = {w: count(w) for w in range(max(2, width - 2), width + 3)}
    return min(candidates, key=lambda w: abs(candidates[w] - target_params))


# --------------------------------------------------------------------------- #
# Configs: one dataclass per experiment; the CLI is built from their fields
# --------------------------------------------------------------------------- #
def option(default, help, **cli):
    """A config field: its default, the one sentence that explains it, and how the CLI spells it.

    `cli` may hold `flag` (default `--field-name`), `type` (int: a positive integer unless
    `signed=True`), `nargs`, `choices` and `required`; a bool field becomes a switch.
    """
    return dataclasses.field(default=default, metadata={"help": help, **cli})


def precision_option():
    """The `precision` field every experiment has."""
    return option("auto", "auto (float32 on CPU, mixed precision on GPUs/TPUs) or a Keras dtype policy",
                  choices=PRECISIONS)


def config_from(config_class, config=None, options=None):
    """`config` (a `config_class` or None) with `options` replaced; unknown options are an error."""
    options = dict(options or {})
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for {config_class.__name__}; known: {sorted(fields)}.")
    if config is None:
        return config_class(**options)
    if not isinstance(config, config_class):
        raise TypeError(f"Expected a {config_class.__name__}, got {type(config).__name__}.")
    return dataclasses.replace(config, **options)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}.")


def scratch_recipe(recipe):
    """The Recipe for training a model from scratch; a fine-tuning recipe is an error (it needs a checkpoint)."""
    recipe = training.get_recipe(recipe)
    if recipe.name in training.FINETUNE_RECIPES:
        scratch = [name for name in training.RECIPES if name not in training.FINETUNE_RECIPES]
        raise ValueError(f"Recipe {recipe.name!r} fine-tunes a pretrained checkpoint (use finetune, or the "
                         f"'pretrained' model with pretrained_recipe); for training from scratch use one of {scratch}.")
    return recipe


def _check_positive(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class DataEfficiencyConfig:
    """Options of `data_efficiency`: ViT vs CNN (vs pretrained) test accuracy as the training set grows."""

    dataset: str = option("shapes", "a dataset name: shapes (embedded, offline), shapes-translation, cifar10, "
                          "cifar100, cats_vs_dogs or folder:PATH")
    sizes: tuple = option(DEFAULT_SIZES, "training examples per class, one stratified seeded subset per size",
                          nargs="+", type=int)
    epochs: int = option(DEFAULT_EPOCHS, "passes over each subset, the same for every scratch model", type=int)
    min_steps: int = option(DEFAULT_MIN_STEPS, "at least this many optimizer steps per scratch run, so that "
                            "small subsets are trained long enough", type=int, signed=True)
    seeds: tuple = option((0,), "one run per seed for every size and model (subset, init, augmentation)",
                          nargs="+", type=int, signed=True)
    models: tuple = option(("vit", "cnn"), "models to compare: vit, cnn, hybrid, pretrained (needs --checkpoint)",
                           nargs="+", choices=MODELS)
    preset: str = option("Nano/4", "ViT preset of the scratch ViT (and the hybrid)")
    cnn_width: int | None = option(None, "CNN width (None: matched to the ViT's parameter count)", type=int)
    recipe: object = option("scratch", "training recipe of the scratch models (a name in training.RECIPES "
                            "or a training.Recipe)")
    batch_size: int = option(64, "training batch size of the scratch models", type=int)
    image_size: int | None = option(None, "resize images to this size (None: the dataset's own; 16 for shapes)",
                                    type=int)
    shapes_sizes: tuple | None = option(None, "(train, test) images generated for the shapes datasets "
                                        "(None: 18,000 and 2,400)", nargs=2, type=int)
    checkpoint: str | None = option(None, "pretrained checkpoint (directory or Hub id) for the pretrained model")
    pretrained_image_size: int = option(112, "resolution the pretrained model is fine-tuned at (images are "
                                        "resized to it; a multiple of the checkpoint's patch size)", type=int)
    pretrained_recipe: str = option(training.DEFAULT_FINETUNE_RECIPE, "fine-tuning recipe of the pretrained model",
                                    choices=tuple(training.FINETUNE_RECIPES))
    pretrained_epochs: int = option(1, "fine-tuning epochs of the pretrained model", type=int)
    data_dir: str | None = option(None, "tensorflow-datasets folder with a local copy")
    cache_dir: str | None = option(None, "Hugging Face download cache")
    out: str = option("runs/data_efficiency", "output folder: results.json (resumable) and data_efficiency.png")
    precision: str = precision_option()
    verbose: bool = option(False, "show Keras progress bars and library log lines")

    def validate(self):
        """Errors about the options alone, before any data is read."""
        bad = [k for k in self.models if k not in MODELS]
        if bad or not self.models:
            raise ValueError(f"Unknown model kind(s) {bad or list(self.models)}; allowed: {list(MODELS)}.")
        if "pretrained" in self.models and not self.checkpoint:
            raise ValueError("The 'pretrained' model needs a checkpoint (CLI: --checkpoint DIR_OR_HUB_ID).")
        for size in self.sizes:
            _check_positive("each of sizes", size)
        _check_positive("epochs", self.epochs)
        _check_positive("pretrained_epochs", self.pretrained_epochs)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("pretrained_recipe", self.pretrained_recipe, training.FINETUNE_RECIPES)
        scratch_recipe(self.recipe)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of `train`: one model on one dataset's train split, tested on its test split."""

    model: str = option("vit", "vit, cnn or hybrid", choices=MODELS[:3])
    preset: str = option("Micro/4", "ViT preset")
    dataset: str = option("shapes", "a dataset name, as for data-efficiency")
    epochs: int = option(10, "passes over the training split", type=int)
    recipe: object = option("scratch", "training recipe (a name in training.RECIPES or a training.Recipe)")
    image_size: int | None = option(None, "resize images to this size (None: the dataset's own)", type=int)
    cnn_width: int | None = option(None, "CNN width (None: matched to the ViT preset's parameter count)", type=int)
    data_dir: str | None = option(None, "tensorflow-datasets folder with a local copy")
    seed: int = option(0, "seed of the initial weights, shuffling and augmentation", type=int, signed=True)
    out: str = option("runs/train", "output folder: history.json (rerun to resume) and result.json")
    precision: str = precision_option()
    verbose: bool = option(False, "show Keras progress bars (else one line per epoch)")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Options of `finetune`: a pretrained ViT / DINOv2 checkpoint fine-tuned on a dataset."""

    checkpoint: str | None = option(None, "checkpoint directory or Hub id, e.g. google/vit-base-patch16-224-in21k, "
                                    "facebook/dinov2-small", required=True)
    dataset: str = option("cats_vs_dogs", "a dataset name: cats_vs_dogs, cifar10, cifar100, folder:PATH, ...")
    recipe: str = option(training.DEFAULT_FINETUNE_RECIPE, "fine-tuning recipe: lp_ft (linear probe, then all "
                         "weights), adamw_head, llrd, paper_sgd (the paper's SGD, meant for batch 512)",
                         choices=tuple(training.FINETUNE_RECIPES))
    linear_probe: bool = option(False, "train only the new head, on frozen features (a linear probe)")
    image_size: int | None = option(None, "resolution (None: the checkpoint's; a multiple of its patch size)",
                                    type=int)
    epochs: int = option(1, "fine-tuning epochs over the training split (LP-FT: after the probe)", type=int)
    batch_size: int | None = option(None, "batch size (None: the recipe's, 32; paper_sgd 512)", type=int)
    learning_rate: float | None = option(None, "peak learning rate of the pretrained weights (None: the recipe's; "
                                         "lp_ft scales it down below 1,000 training images)",
                                         type=float)
    train_size: int | None = option(None, "use this many training images, a stratified seeded sample", type=int)
    test_size: int | None = option(None, "use this many test images, a stratified seeded sample", type=int)
    data_dir: str | None = option(None, "tensorflow-datasets folder with a local copy")
    cache_dir: str | None = option(None, "Hugging Face download cache (default ~/.cache/huggingface)")
    seed: int = option(0, "seed of the head, the subsets, shuffling and augmentation", type=int, signed=True)
    out: str = option("runs/finetune", "output folder: result.json, history.json (rerun to resume), model.keras")
    precision: str = precision_option()
    verbose: bool = option(False, "show Keras progress bars (else one line per epoch)")

    def make_recipe(self):
        """The recipe with this config's batch size and learning rate; an unknown recipe is an error."""
        if self.recipe not in training.FINETUNE_RECIPES:
            raise ValueError(f"Unknown fine-tuning recipe {self.recipe!r}; allowed: {list(training.FINETUNE_RECIPES)}.")
        return training.get_recipe(self.recipe, batch_size=self.batch_size, learning_rate=self.learning_rate)

    def validate(self):
        """Errors about the options alone, before any checkpoint or data is read."""
        if not self.checkpoint:
            raise ValueError("finetune needs a checkpoint: a directory or a Hub id (CLI: --checkpoint).")
        self.make_recipe()
        _check_positive("epochs", self.epochs)
        for name in ("batch_size", "image_size", "train_size", "test_size"):
            _check_positive(name, getattr(self, name), allow_none=True)
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        _check_choice("precision", self.precision, PRECISIONS)


# --------------------------------------------------------------------------- #
# Models and one training run
# --------------------------------------------------------------------------- #
def build_model(kind, image_size, num_classes, vit_preset="Nano/4", cnn_width=None, seed=0, **vit_overrides):
    """One of the scratch models: "vit", "cnn" (width matched to the ViT unless given) or "hybrid"."""
    if kind == "vit":
        return models.build_vit(vit_preset, image_size=image_size, num_classes=num_classes, seed=seed, **vit_overrides)
    if kind == "cnn":
        if cnn_width is None:
            target = models.build_vit(vit_preset, image_size=image_size, num_classes=num_classes).count_params()
            cnn_width = matched_cnn_width(target, image_size, num_classes)
        return models.build_cnn(image_size, num_classes, width=cnn_width, seed=seed)
    if kind == "hybrid":
        return models.build_hybrid_vit(
            vit_preset, image_size=image_size, num_classes=num_classes, stem_width=16, stem_stages=2, seed=seed,
            **vit_overrides,
        )
    raise ValueError(f"Unknown model kind {kind!r}; allowed: {list(MODELS[:3])} (and 'pretrained' in data_efficiency).")


def train_and_evaluate(
    model, train_data, test_data, recipe, epochs, min_steps=0, seed=0, out_dir=None, verbose=0, batch_size=None
):
    """Trains `model` on ArrayData with a recipe and returns (test accuracy, epochs run, seconds, history).

    Every epoch is one pass over `train_data`; with `min_steps`, small training
    sets get more epochs so that every run takes at least that many steps.
    """
    recipe = scratch_recipe(recipe)
    batch_size = min(batch_size or recipe.batch_size, len(train_data))
    steps_per_epoch = max(1, len(train_data) // batch_size)
    epochs = max(int(epochs), math.ceil(min_steps / steps_per_epoch))
    train_batches = vdata.make_pipeline(
        train_data, batch_size, training=True, augmentation=recipe.augmentation, seed=seed, repeat=True
    )
    test_batches = vdata.make_pipeline(test_data, 256, num_classes=train_data.num_classes)
    training.compile_model(model, recipe, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    history = training.fit(model, train_batches, epochs, steps_per_epoch, out_dir=out_dir, verbose=verbose)
    seconds = time.perf_counter() - start
    return evaluate(model, test_batches), epochs, seconds, history


def evaluate(model, batches):
    """Top-1 accuracy of `model` on (images, one-hot labels) batches, read to their end.

    A folder's stream has an unknown length (`ignore_errors` drops files TensorFlow
    cannot decode), and Keras warns "Your input ran out of data" when such a finite
    stream ends, which is exactly what evaluation expects: that one warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        return float(model.evaluate(batches, verbose=0, return_dict=True)["accuracy"])


# --------------------------------------------------------------------------- #
# Fine-tuning a pretrained model: linear probe, LP-FT, one-stage recipes
# --------------------------------------------------------------------------- #
def _features(model, batches):
    """(features, one-hot labels) of every batch: the input of the model's head, computed once."""
    feature_model = keras.Model(model.input, model.get_layer("head").input)
    features, labels = [], []
    for images, onehot in batches.as_numpy_iterator():
        features.append(keras.ops.convert_to_numpy(feature_model(images, training=False)).astype("float32"))
        labels.append(onehot)
    return np.concatenate(features), np.concatenate(labels)


def train_linear_probe(model, batches, recipe, seed=0):
    """Trains the model's head alone on frozen features (a linear probe); the rest is untouched.

    The features (the head's input) are computed once, without augmentation, in one
    forward pass over `batches`; then the head trains for `recipe.probe_epochs` full
    passes over them with AdamW (`probe_learning_rate`, `probe_weight_decay`, cosine):
    logistic regression on the features, cheap next to a forward pass.

    Args:
        model: a model with a layer named "head" (from `vitkeras.load_pretrained`).
        batches: (images, one-hot labels) batches, not augmented, finite.
        recipe: a Recipe (or name) with the probe fields.
        seed: order of the examples.

    Returns:
        {"seconds": ..., "feature_seconds": ..., "train_accuracy": ...}
    """
    recipe = training.get_recipe(recipe)
    start = time.perf_counter()
    features, labels = _features(model, batches)  # (n, D), (n, K)
    feature_seconds = time.perf_counter() - start
    order = np.random.default_rng(seed).permutation(len(features))
    features, labels = features[order], labels[order]
    head = model.get_layer("head")
    inputs = keras.Input(features.shape[1:], name="features")
    probe = keras.Model(inputs, head(inputs), name="linear_probe")  # shares the head's weights
    batch_size = min(256, len(features))
    steps = recipe.probe_epochs * math.ceil(len(features) / batch_size)
    probe.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(recipe.probe_learning_rate, steps),
            weight_decay=recipe.probe_weight_decay,
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )
    history = probe.fit(features, labels, batch_size=batch_size, epochs=recipe.probe_epochs, shuffle=False, verbose=0)
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "feature_seconds": round(feature_seconds, 2),
        "train_accuracy": float(history.history["accuracy"][-1]),
    }


def fine_tune(model, train, num_examples, num_classes, recipe, epochs=1, linear_probe=False, seed=0,
              out_dir=None, verbose=0, resize=None, log=None):
    """Fine-tunes a pretrained model with a recipe: linear probe, LP-FT or one stage.

    Args:
        model: from `vitkeras.load_pretrained(..., num_classes=K)`; takes [0, 255] images.
        train: ArrayData or a tf.data stream of (uint8 image, label) (`vitkeras.data.load`).
        num_examples: its size (steps per epoch come from it).
        num_classes: K.
        recipe: a fine-tuning Recipe or name (`training.FINETUNE_RECIPES`).
        epochs: fine-tuning epochs of all weights (not used by a linear probe).
        linear_probe: only the head trains, on frozen features.
        seed: shuffling and augmentation.
        out_dir: where `training.fit` keeps history.json and its backup (resume).
        verbose: Keras verbosity of the fine-tuning epochs.
        resize: resize images to this size in the pipeline (e.g. 32-px CIFAR to 112).
        log: a function for one progress line per stage (None: quiet).

    Returns:
        {"probe": {...} or None, "seconds": all stages, "finetune_seconds", "seconds_per_epoch",
         "steps_per_epoch", "history"}
    """
    recipe = training.get_recipe(recipe)
    batch = min(recipe.batch_size, num_examples)
    start = time.perf_counter()
    probe = None
    if linear_probe or recipe.linear_probe_first:
        plain = vdata.make_pipeline(train, 64, num_classes, rescale=1.0, resize=resize)
        probe = train_linear_probe(model, plain, recipe, seed=seed)
        if log:
            log(f"  linear probe: {num_examples} images, features in {probe['feature_seconds']:.0f} s, "
                f"head trained to {probe['train_accuracy']:.3f} training accuracy")
    history, steps_per_epoch, finetune_seconds = {}, 0, 0.0
    if not linear_probe:
        recipe = recipe.replace(learning_rate=training.learning_rate_for(recipe, num_examples))
        steps_per_epoch = max(1, num_examples // batch)
        batches = vdata.make_pipeline(train, batch, num_classes, training=True, augmentation=recipe.augmentation,
                                      rescale=1.0, seed=seed, repeat=True, resize=resize)
        for layer in model.layers:
            layer.trainable = True
        training.compile_model(model, recipe, total_steps=epochs * steps_per_epoch)
        fit_start = time.perf_counter()
        history = training.fit(model, batches, epochs, steps_per_epoch, out_dir=out_dir, verbose=verbose)
        finetune_seconds = time.perf_counter() - fit_start
    else:
        training.compile_model(model, recipe, total_steps=1)  # loss and accuracy for evaluate and save
    return {
        "probe": probe,
        "seconds": round(time.perf_counter() - start, 2),
        "finetune_seconds": round(finetune_seconds, 2),
        "seconds_per_epoch": round(finetune_seconds / epochs, 2) if not linear_probe else None,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": batch,
        "learning_rate": None if linear_probe else recipe.learning_rate,
        "history": history,
    }


class _Precision:
    """Sets the global dtype policy for an experiment ("auto": the one the device should use) and restores it."""

    def __init__(self, precision):
        _check_choice("precision", precision, PRECISIONS)
        self.policy = training.choose_precision() if precision == "auto" else precision

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)
        return self.policy

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)
        return False


def _keras_verbosity(verbose, quiet=2):
    return "auto" if verbose else quiet


# --------------------------------------------------------------------------- #
# finetune
# --------------------------------------------------------------------------- #
def _finetune_resolution(config):
    """(checkpoint directory, PretrainedInfo, image size); a size that does not fit the patches is an error."""
    directory = pretrained.resolve_checkpoint(config.checkpoint, config.cache_dir)
    info = pretrained.read_pretrained_info(directory)
    size = int(config.image_size or info.image_size[0])
    pretrained.check_image_size(info, size)
    return directory, info, size


def _finetune_data(config, size):
    """(train stream, train info, test stream, test info), stratified seeded subsets when sizes are given."""
    train, train_info = vdata.load(config.dataset, "train", image_size=size, data_dir=config.data_dir,
                                   max_examples=config.train_size, subset_seed=config.seed)
    test, test_info = vdata.load(config.dataset, "test", image_size=size, data_dir=config.data_dir,
                                 max_examples=config.test_size, subset_seed=config.seed)
    return train, train_info, test, test_info


def finetune(config=None, log=print, **options):
    """Fine-tunes a pretrained checkpoint on a dataset and reports test accuracy (paper section 3.2).

    The checkpoint's head is replaced by a zero-initialised K-class head. The
    default recipe, "lp_ft", first trains that head alone on frozen features (a
    linear probe), then fine-tunes all weights with AdamW at a small learning
    rate; `linear_probe=True` stops after the probe. Images are resized to the
    checkpoint's resolution (or `image_size`) and fed in [0, 255]: the model
    applies the checkpoint's own normalisation. Every bad option is reported
    before any training starts. Writes `out/history.json` (resumable),
    `out/result.json` and the fine-tuned model `out/model.keras`.

    Args:
        config: a `FinetuneConfig` (None: the defaults).
        log: function that prints progress.
        **options: `FinetuneConfig` fields that replace the config's.

    Returns:
        The result dict written to `out/result.json`.
    """
    config = config_from(FinetuneConfig, config, options)
    config.validate()
    recipe = config.make_recipe()
    out = Path(config.out)
    with _Precision(config.precision) as policy:
        directory, info, size = _finetune_resolution(config)
        train, train_info, test, test_info = _finetune_data(config, size)
        model = pretrained.load_pretrained(directory, image_size=size, num_classes=train_info.num_classes,
                                           linear_probe=config.linear_probe, seed=config.seed)
        log(f"fine-tuning {info.model_type} from {config.checkpoint} ({model.count_params():,} parameters) on "
            f"{config.dataset} at {size}x{size}: {train_info.num_examples} training images, recipe {recipe.name}"
            f"{' (linear probe only)' if config.linear_probe else ''}")
        run = fine_tune(model, train, train_info.num_examples, train_info.num_classes, recipe, config.epochs,
                        linear_probe=config.linear_probe, seed=config.seed, out_dir=out,
                        verbose=_keras_verbosity(config.verbose), log=log)
        accuracy = evaluate(model, vdata.make_pipeline(test, 64, train_info.num_classes, rescale=1.0))
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.keras")
    result = _finetune_result(config, recipe, info, size, train_info, test_info, model, run, accuracy, policy)
    training.write_json_atomic(out / "result.json", result)
    log(f"test accuracy {accuracy:.4f} ({run['seconds']:.0f} s of training); wrote {out / 'result.json'}")
    return result


def _jsonable(options):
    """Config values as JSON can store them (paths as strings, tuples as lists)."""
    return {k: str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
            for k, v in options.items()}


def _finetune_result(config, recipe, info, size, train_info, test_info, model, run, accuracy, policy):
    return {
        "checkpoint": str(config.checkpoint),
        "model_type": info.model_type,
        "dataset": config.dataset,
        "image_size": size,
        "recipe": recipe.name,
        "linear_probe": bool(config.linear_probe),
        "train_size": train_info.num_examples,
        "test_size": test_info.num_examples,
        "train_class_counts": np.bincount(train_info.labels, minlength=train_info.num_classes).tolist()
        if train_info.labels is not None else None,
        "test_accuracy": accuracy,
        "epochs": 0 if config.linear_probe else int(config.epochs),
        "parameters": model.count_params(),
        "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        **{k: v for k, v in run.items() if k != "history"},
        "recipe_details": dataclasses.asdict(recipe),
        "config": _jsonable(dataclasses.asdict(config)),
        "precision": policy,
        "machine": machine_description(),
        "history": run["history"],
    }


# --------------------------------------------------------------------------- #
# data_efficiency
# --------------------------------------------------------------------------- #
def _load_results(path, settings):
    if not path.exists():
        return []
    stored = json.loads(path.read_text())
    if stored.get("settings", {}).get("key") != settings["key"]:
        raise ValueError(
            f"{path} holds results of other settings ({stored.get('settings', {}).get('key')}); "
            f"use another --out or delete it to start over."
        )
    return stored["results"]


def _efficiency_data(config):
    """(train pool, test set) as ArrayData; sizes larger than the pool's smallest class are an error."""
    train_size, test_size = config.shapes_sizes or (None, None)
    train_all = vdata.load_arrays(config.dataset, "train", image_size=config.image_size, data_dir=config.data_dir,
                                  shapes_size=train_size)
    test = vdata.load_arrays(config.dataset, "test", image_size=config.image_size, data_dir=config.data_dir,
                             shapes_size=test_size)
    largest = int(np.bincount(train_all.labels).min())
    if max(config.sizes) > largest:
        raise ValueError(f"sizes go up to {max(config.sizes)} per class, but {config.dataset!r} has only "
                         f"{largest} per class; allowed: 1 to {largest}.")
    return train_all, test


def _efficiency_models(config, size_px, num_classes):
    """(CNN width, {kind: parameter count}): the CNN's width is matched to the ViT once, not per run."""
    width = config.cnn_width
    if "cnn" in config.models and width is None:
        target = models.build_vit(config.preset, image_size=size_px, num_classes=num_classes).count_params()
        width = matched_cnn_width(target, size_px, num_classes)
    params = {}
    for kind in config.models:
        if kind == "pretrained":
            info = pretrained.read_pretrained_info(pretrained.resolve_checkpoint(config.checkpoint, config.cache_dir))
            pretrained.check_image_size(info, config.pretrained_image_size)
            params[kind] = models.build_vit(info.config, image_size=config.pretrained_image_size,
                                            num_classes=num_classes).count_params()
        else:
            params[kind] = build_model(kind, size_px, num_classes, config.preset, width).count_params()
    return width, params


def _efficiency_settings(config, train_all, test, width, params, policy):
    recipe = training.get_recipe(config.recipe)
    key = dict(
        dataset=config.dataset, sizes=sorted(config.sizes), epochs=config.epochs, models=list(config.models),
        vit_preset=config.preset, cnn_width=config.cnn_width,
        # A named recipe by name (keeps existing results files valid); a modified one by all its fields.
        recipe=recipe.name if recipe == training.RECIPES.get(recipe.name) else dataclasses.asdict(recipe),
        min_steps=config.min_steps, batch_size=config.batch_size, image_size=int(train_all.images.shape[1]),
    )
    if config.shapes_sizes:  # only in the key when set: results files of the default run stay valid
        key["shapes_sizes"] = list(config.shapes_sizes)
    if "pretrained" in config.models:
        key.update(checkpoint=str(config.checkpoint), pretrained_image_size=config.pretrained_image_size,
                   pretrained_recipe=config.pretrained_recipe, pretrained_epochs=config.pretrained_epochs)
    return {
        "key": json.dumps(key, sort_keys=True),
        **key,
        "seeds": list(config.seeds),
        "parameters": params,
        "cnn_width_used": width,
        "recipe_details": dataclasses.asdict(recipe),
        "train_pool": len(train_all),
        "test_size": len(test),
        "num_classes": train_all.num_classes,
        "precision": policy,
        "machine": machine_description(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _efficiency_point(config, kind, subset, test, width, seed):
    """Trains one (model, subset, seed) point and returns its result row (without bookkeeping fields)."""
    keras.backend.clear_session()
    num_classes = subset.num_classes
    if kind == "pretrained":
        size = config.pretrained_image_size
        model = pretrained.load_pretrained(config.checkpoint, image_size=size, num_classes=num_classes,
                                           cache_dir=config.cache_dir, seed=seed)
        run = fine_tune(model, subset, len(subset), num_classes, config.pretrained_recipe, config.pretrained_epochs,
                        seed=seed, verbose=_keras_verbosity(config.verbose, quiet=0), resize=size)
        accuracy = evaluate(model, vdata.make_pipeline(test, 64, num_classes, rescale=1.0, resize=size))
        return {"test_accuracy": accuracy, "epochs": config.pretrained_epochs, "seconds": run["seconds"]}
    model = build_model(kind, subset.images.shape[1], num_classes, config.preset, width, seed=seed)
    accuracy, epochs, seconds, _ = train_and_evaluate(
        model, subset, test, config.recipe, config.epochs, min_steps=config.min_steps, seed=seed,
        verbose=_keras_verbosity(config.verbose, quiet=0), batch_size=config.batch_size,
    )
    return {"test_accuracy": accuracy, "epochs": epochs, "seconds": round(seconds, 2)}


def data_efficiency(config=None, log=print, **options):
    """ViT vs CNN (vs a fine-tuned pretrained ViT) test accuracy as the training set grows.

    For every seed and size, a stratified seeded subset of the training pool
    trains each model; all are tested on the same test set. Results are written
    to `out/results.json` after every point; a rerun with the same settings
    skips finished points, with other settings it refuses (delete the file or
    use another `out`).

    Args:
        config: a `DataEfficiencyConfig` (None: the defaults, the course's main job).
        log: function that prints progress.
        **options: `DataEfficiencyConfig` fields that replace the config's.

    Returns:
        {"settings": {...}, "results": [{"model", "train_size", "seed", "test_accuracy", "epochs", "seconds", ...}]}
    """
    config = config_from(DataEfficiencyConfig, config, options)
    config.validate()
    out = Path(config.out)
    with _Precision(config.precision) as policy:
        train_all, test = _efficiency_data(config)
        width, params = _efficiency_models(config, int(train_all.images.shape[1]), train_all.num_classes)
        settings = _efficiency_settings(config, train_all, test, width, params, policy)
        results = _load_results(out / "results.json", settings)
        done = {(r["model"], r["train_size"], r["seed"]) for r in results}
        log(f"data-efficiency on {config.dataset}: {train_all.num_classes} classes, test set {len(test)}, "
            f"parameters {params}")
        for seed in config.seeds:
            for per_class in sorted(config.sizes):
                subset = train_all.take(vdata.stratified_subset(train_all.labels, per_class, seed=seed))
                for kind in config.models:
                    if (kind, len(subset), seed) in done:
                        continue
                    row = {"model": kind, "train_size": len(subset), "seed": seed,
                           **_efficiency_point(config, kind, subset, test, width, seed), "parameters": params[kind]}
                    results.append(row)
                    training.write_json_atomic(out / "results.json", {"settings": settings, "results": results})
                    log(f"  {kind:<10} n={len(subset):>6} seed={seed}: test accuracy {row['test_accuracy']:.3f} "
                        f"({row['epochs']} epochs, {row['seconds']:.0f} s)")
    summary = {"settings": settings, "results": results}
    plot_data_efficiency(summary, out / "data_efficiency.png")
    return summary


def summary_table(summary):
    """Test accuracy per model (columns) and training size (rows), mean over seeds, as text.

    Example:
    >>> print(summary_table({"results": [{"model": "vit", "train_size": 60, "test_accuracy": 0.5},
    ...                                  {"model": "cnn", "train_size": 60, "test_accuracy": 0.75}]}))
    train size |    vit |    cnn | cnn - vit
            60 |  0.500 |  0.750 |  +25.0 pts
    """
    results = summary["results"]
    kinds = [k for k in MODELS if any(r["model"] == k for r in results)]
    both = {"vit", "cnn"} <= set(kinds)
    width = max(6, *(len(k) for k in kinds))
    lines = ["train size | " + " | ".join(f"{k:>{width}}" for k in kinds) + (" | cnn - vit" if both else "")]
    for size in sorted({r["train_size"] for r in results}):
        means = {}
        for kind in kinds:
            values = [r["test_accuracy"] for r in results if r["model"] == kind and r["train_size"] == size]
            means[kind] = sum(values) / len(values) if values else float("nan")
        row = f"{size:>10} | " + " | ".join(f"{means[k]:{width}.3f}" for k in kinds)
        if both:
            row += f" | {100 * (means['cnn'] - means['vit']):+6.1f} pts"
        lines.append(row)
    return "\n".join(lines)


def _short_name(dataset):
    """A dataset name for a title: a folder by its last component ("folder:/a/b/cifar10[cat,dog]" -> "cifar10[cat,dog]")."""
    base, classes = vdata.split_classes(dataset)
    if base.startswith("folder:"):
        base = Path(base[len("folder:"):]).name or base
    return base + (f"[{','.join(classes)}]" if classes else "")


def plot_data_efficiency(summary, path=None):
    """Test accuracy against training-set size (log x), one line per model, a band over seeds.

    Returns the matplotlib figure; saves it to `path` (PNG) when given.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    results = summary["results"]
    settings = summary.get("settings", {})
    figure, axes = plt.subplots(figsize=(6, 4))
    for kind in [m for m in MODELS if any(r["model"] == m for r in results)]:
        sizes = sorted({r["train_size"] for r in results if r["model"] == kind})
        values = [[r["test_accuracy"] for r in results if r["model"] == kind and r["train_size"] == n] for n in sizes]
        mean = np.array([np.mean(v) for v in values])
        label = f"{kind} ({settings.get('parameters', {}).get(kind, 0) / 1e3:.0f}k params)"
        (line,) = axes.plot(sizes, mean, marker="o", label=label)
        if any(len(v) > 1 for v in values):
            low = np.array([np.min(v) for v in values])
            high = np.array([np.max(v) for v in values])
            axes.fill_between(sizes, low, high, color=line.get_color(), alpha=0.2)
    if settings.get("num_classes"):
        axes.axhline(1.0 / settings["num_classes"], color="grey", linestyle=":", label="chance")
    axes.set_xscale("log")
    axes.set_xlabel("training images")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.set_title(f"Data efficiency on {_short_name(settings.get('dataset', '?'))}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(path).with_name(f".{Path(path).name}.tmp.png")
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
    return figure


def train(config=None, log=print, **options):
    """Trains one model on a dataset's train split and reports test accuracy.

    Writes `out/history.json` (resumable: rerun after an interruption to continue)
    and `out/result.json`.

    Args:
        config: a `TrainConfig` (None: the defaults).
        log: function that prints progress.
        **options: `TrainConfig` fields that replace the config's.
    """
    config = config_from(TrainConfig, config, options)
    _check_choice("model", config.model, MODELS[:3])
    scratch_recipe(config.recipe)
    out = Path(config.out)
    with _Precision(config.precision) as policy:
        train_data = vdata.load_arrays(config.dataset, "train", image_size=config.image_size, data_dir=config.data_dir)
        test = vdata.load_arrays(config.dataset, "test", image_size=config.image_size, data_dir=config.data_dir)
        model = build_model(config.model, train_data.images.shape[1], train_data.num_classes, config.preset,
                            cnn_width=config.cnn_width, seed=config.seed)
        log(f"training {model.name} ({model.count_params():,} parameters) on {config.dataset}: "
            f"{len(train_data)} images")
        accuracy, epochs, seconds, history = train_and_evaluate(
            model, train_data, test, config.recipe, config.epochs, seed=config.seed, out_dir=out,
            verbose=_keras_verbosity(config.verbose),
        )
    result = {
        "model": config.model,
        "preset": config.preset if config.model != "cnn" else None,
        "dataset": config.dataset,
        "train_size": len(train_data),
        "test_size": len(test),
        "test_accuracy": accuracy,
        "epochs": epochs,
        "seconds": round(seconds, 2),
        "parameters": model.count_params(),
        "recipe": training.get_recipe(config.recipe).name,
        "precision": policy,
        "machine": machine_description(),
        "history": history,
    }
    training.write_json_atomic(out / "result.json", result)
    log(f"test accuracy {accuracy:.4f} after {epochs} epochs ({seconds:.0f} s); wrote {out / 'result.json'}")
    return result
