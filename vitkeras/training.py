"""The training recipes: optimizer, schedule, loss, precision, resumable fit, data parallelism.

Training from scratch:

- "scratch": training a ViT from scratch on small data (DeiT / "How to train
  your ViT"): AdamW, weight decay 0.05 except on biases, norms, position
  embeddings and the class token; linear warm-up then cosine decay; label
  smoothing 0.1; gradient clipping at global norm 1.
- "keras_example": "Image classification with Vision Transformer" on keras.io
  (the revision `vitkeras.keras_example` names): AdamW 1e-3, weight decay 1e-4
  on every weight, constant learning rate.

Fine-tuning a pretrained checkpoint (`FINETUNE_RECIPES`; the default,
`DEFAULT_FINETUNE_RECIPE`, won the sweep in benchmarks/finetune_sweep.py):

- "lp_ft": linear probe, then fine-tune (Kumar et al., ICLR 2022). Stage 1
  trains only the new head on frozen features (one forward pass over the
  training images, then many cheap epochs of the head); stage 2 fine-tunes
  all weights from that head with AdamW at a small learning rate, warm-up
  and cosine. A trained head means the first fine-tuning steps do not send
  large random gradients into the pretrained features. Given held-out images
  (`keep_probe_unless_better`), it keeps the probe's weights unless the
  fine-tuned ones score higher on them.
- "adamw_head": one stage, AdamW with a small learning rate for the
  pretrained weights and `head_learning_rate_multiplier` times it for the
  new zero-initialised head.
- "llrd": as "adamw_head" plus layer-wise learning-rate decay (BEiT, DINOv2):
  block i of L learns at `layer_decay ** (L - i)` times the top block's rate.
- "paper_sgd": the paper's fine-tuning (section 3.2, appendix B.1.1): SGD with
  momentum 0.9, lr 0.01, no weight decay, warm-up then cosine, clipping at
  norm 1, **batch 512**. At the batch sizes a course can afford (16 to 64) it
  destroys the pretrained features (benchmarks/RESULTS.md); kept for reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path

import keras

__all__ = [
    "Recipe",
    "RECIPES",
    "FINETUNE_RECIPES",
    "DEFAULT_FINETUNE_RECIPE",
    "get_recipe",
    "AdamWMultipliers",
    "learning_rate_multipliers",
    "learning_rate_for",
    "no_weight_decay",
    "learning_rate_schedule",
    "make_optimizer",
    "compile_model",
    "precision_for",
    "accelerator",
    "choose_precision",
    "AUGMENT_ON",
    "augment_on_for",
    "Augmented",
    "fit",
    "data_parallel",
    "write_json_atomic",
    "TimeBudget",
]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, schedule and regularisation."""

    name: str
    optimizer: str = "adamw"  # "adamw" or "sgd"
    learning_rate: float = 1e-3  # peak learning rate, reached after warm-up
    weight_decay: float = 0.05  # decoupled (AdamW) decay; not applied to `no_weight_decay` weights
    decay_all_weights: bool = False  # True: decay every weight (as the Keras example does)
    momentum: float = 0.9  # SGD only
    warmup_fraction: float = 0.05  # share of all steps spent in linear warm-up
    schedule: str = "cosine"  # "cosine" (to 0 after warm-up) or "constant"
    label_smoothing: float = 0.1
    global_clipnorm: float | None = 1.0  # clip gradients to this global norm (None: no clipping)
    batch_size: int = 128
    augmentation: str = "basic"  # see vitkeras.data.make_augmentation
    # Fine-tuning only: the new head learns this many times faster than the pretrained weights.
    head_learning_rate_multiplier: float = 1.0
    # Fine-tuning only: layer-wise decay; block i of L gets layer_decay ** (L - i) (1.0: off).
    layer_decay: float = 1.0
    # Fine-tuning only: first train the head alone on frozen features (linear probe, LP-FT).
    linear_probe_first: bool = False
    # Fine-tuning only: below this many training images the learning rate shrinks in proportion
    # (to at least a quarter): with few images the probe already fits them, the gradients are mostly
    # noise, and Adam's normalised steps turn noise into full-size updates (benchmarks/RESULTS.md).
    full_learning_rate_from: int | None = None
    # Fine-tuning only (LP-FT): given validation images, keep the probe's weights unless the
    # fine-tuned ones score higher there. With ~100 training images fine-tuning can fall below
    # the probe it started from (benchmarks/RESULTS.md); a held-out check catches that.
    keep_probe_unless_better: bool = False
    # The linear probe (stage 1 of LP-FT, and `--linear-probe`): AdamW on cached features.
    probe_learning_rate: float = 3e-3
    probe_epochs: int = 200  # epochs over the cached features (cheap: a D x K matmul)
    probe_weight_decay: float = 1e-4

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


RECIPES = {
    "scratch": Recipe("scratch"),
    "keras_example": Recipe(
        "keras_example",
        learning_rate=1e-3,
        weight_decay=1e-4,
        decay_all_weights=True,
        warmup_fraction=0.0,
        schedule="constant",
        label_smoothing=0.0,
        global_clipnorm=None,
        batch_size=256,
        augmentation="basic",
    ),
}

# Fine-tuning recipes; batch 32 unless the recipe needs another (paper_sgd: 512).
# Learning rates chosen by benchmarks/finetune_sweep.py (DINOv2-S/14, CIFAR-10 cats vs dogs).
_FINETUNE_COMMON = dict(
    optimizer="adamw", weight_decay=0.05, warmup_fraction=0.1, label_smoothing=0.0, batch_size=32,
    augmentation="basic", global_clipnorm=1.0,
)
FINETUNE_RECIPES = {
    "lp_ft": Recipe("lp_ft", learning_rate=2e-5, linear_probe_first=True, full_learning_rate_from=1000,
                    keep_probe_unless_better=True, **_FINETUNE_COMMON),
    "adamw_head": Recipe("adamw_head", learning_rate=2e-5, head_learning_rate_multiplier=100.0, **_FINETUNE_COMMON),
    "llrd": Recipe("llrd", learning_rate=5e-5, head_learning_rate_multiplier=40.0, layer_decay=0.75,
                   **_FINETUNE_COMMON),
    "paper_sgd": Recipe(
        "paper_sgd", optimizer="sgd", learning_rate=0.01, weight_decay=0.0, warmup_fraction=0.05,
        label_smoothing=0.0, batch_size=512, augmentation="basic",
    ),
}
RECIPES.update(FINETUNE_RECIPES)
DEFAULT_FINETUNE_RECIPE = "lp_ft"


def get_recipe(name_or_recipe, **overrides):
    """A `Recipe` by name (see `RECIPES`) with optional field overrides (None values are ignored).

    Example:
    >>> get_recipe("lp_ft", batch_size=16).batch_size
    16
    """
    if isinstance(name_or_recipe, Recipe):
        recipe = name_or_recipe
    elif isinstance(name_or_recipe, str) and name_or_recipe in RECIPES:
        recipe = RECIPES[name_or_recipe]
    else:
        raise ValueError(f"Unknown recipe {name_or_recipe!r}; known: {list(RECIPES)}.")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Recipe)})
    if unknown:
        raise ValueError(f"Unknown recipe field(s) {unknown}; known: {[f.name for f in dataclasses.fields(Recipe)]}.")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return recipe.replace(**overrides) if overrides else recipe


def no_weight_decay(variable):
    """Biases, norm scales and offsets, LayerScale, position embeddings and the class token: no decay."""
    path = variable.path
    return len(variable.shape) <= 1 or "position_embedding" in path or "class_token" in path


def learning_rate_for(recipe, num_examples):
    """The recipe's peak learning rate for a training set of `num_examples` (see `full_learning_rate_from`).

    Example:
    >>> [learning_rate_for("lp_ft", n) for n in (100, 400, 1000, 5000)]
    [5e-06, 8e-06, 2e-05, 2e-05]
    """
    recipe = get_recipe(recipe)
    if not recipe.full_learning_rate_from:
        return recipe.learning_rate
    scale = min(1.0, max(0.25, num_examples / recipe.full_learning_rate_from))
    return float(f"{recipe.learning_rate * scale:.3g}")


def learning_rate_multipliers(model, recipe):
    """{variable path: multiplier} of a fine-tuning recipe for `model`'s trainable weights.

    The head gets `head_learning_rate_multiplier`; with `layer_decay` < 1, block i of L
    gets `layer_decay ** (L - i)` and everything below the blocks (preprocessing,
    patch encoder: E, class token, E_pos) `layer_decay ** (L + 1)`. The final
    LayerNorm and anything else above the blocks keep 1. Only multipliers other
    than 1 are listed.
    """
    recipe = get_recipe(recipe)
    model = model.inner if isinstance(model, Augmented) else model  # the same weights, and the ViT's layers
    blocks = [layer.name for layer in model.layers if layer.name.startswith("encoder_block_")]
    depth = len(blocks)
    multipliers = {}
    for layer in model.layers:
        if layer.name == "head":
            factor = recipe.head_learning_rate_multiplier
        elif recipe.layer_decay == 1.0 or not depth:
            factor = 1.0
        elif layer.name in blocks:
            factor = recipe.layer_decay ** (depth - int(layer.name.rsplit("_", 1)[1]))
        elif layer.name in ("patches", "patch_encoder", "preprocessing"):
            factor = recipe.layer_decay ** (depth + 1)
        else:
            factor = 1.0
        if factor != 1.0:
            multipliers.update({w.path: float(factor) for w in layer.trainable_weights})
    return multipliers


@keras.saving.register_keras_serializable(package="vitkeras")
class AdamWMultipliers(keras.optimizers.AdamW):
    """AdamW whose learning rate is multiplied per variable (a larger one for a new head, layer-wise decay).

    Keras optimizers take one learning rate; fine-tuning wants several. This
    subclass scales the learning rate that `update_step` receives by
    `learning_rate_multipliers[variable.path]` (1 when absent). Decoupled
    weight decay stays at the base rate.

    Args:
        learning_rate_multipliers: {variable path: multiplier}.
        **kwargs: `keras.optimizers.AdamW` arguments.

    Example:
    >>> optimizer = AdamWMultipliers({"head/kernel": 10.0}, learning_rate=1e-4)
    >>> optimizer.multiplier_for("head/kernel"), optimizer.multiplier_for("encoder_block_0/query/kernel")
    (10.0, 1.0)
    """

    def __init__(self, learning_rate_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate_multipliers = {str(k): float(v) for k, v in (learning_rate_multipliers or {}).items()}

    def multiplier_for(self, path):
        return self.learning_rate_multipliers.get(path, 1.0)

    def update_step(self, gradient, variable, learning_rate):
        # JAX and PyTorch pass the Keras variable; TensorFlow its tf.Variable, named "<path>:0".
        path = getattr(variable, "path", None) or variable.name.split(":")[0]
        multiplier = self.multiplier_for(path)
        if multiplier != 1.0:
            learning_rate = learning_rate * multiplier
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "learning_rate_multipliers": dict(self.learning_rate_multipliers)}


def learning_rate_schedule(recipe, total_steps):
    """The recipe's learning rate over `total_steps`: a number (constant) or a Keras schedule (warm-up + cosine).

    Example:
    >>> schedule = learning_rate_schedule("scratch", total_steps=100)
    >>> [round(float(keras.ops.convert_to_numpy(schedule(step))), 6) for step in (0, 5, 100)]
    [0.0, 0.001, 0.0]
    """
    recipe = get_recipe(recipe)
    total_steps = max(int(total_steps), 1)
    warmup = int(round(recipe.warmup_fraction * total_steps))
    if recipe.schedule == "constant":
        return recipe.learning_rate
    if recipe.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else recipe.learning_rate,
            decay_steps=max(total_steps - warmup, 1),
            warmup_target=recipe.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
    raise ValueError(f"Unknown schedule {recipe.schedule!r}; allowed: 'cosine', 'constant'.")


def make_optimizer(recipe, total_steps, model=None):
    """The recipe's optimizer with its warm-up + cosine schedule over `total_steps`.

    Args:
        recipe: a Recipe or a recipe name.
        total_steps: optimizer steps of the whole run.
        model: needed by AdamW to exclude `no_weight_decay` weights.

    Example:
    >>> make_optimizer("paper_sgd", total_steps=100).__class__.__name__
    'SGD'
    """
    recipe = get_recipe(recipe)
    schedule = learning_rate_schedule(recipe, total_steps)
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(
            schedule, momentum=recipe.momentum, global_clipnorm=recipe.global_clipnorm
        )
    if recipe.optimizer != "adamw":
        raise ValueError(f"Unknown optimizer {recipe.optimizer!r}; allowed: 'adamw', 'sgd'.")
    multipliers = {}
    if recipe.head_learning_rate_multiplier != 1.0 or recipe.layer_decay != 1.0:
        if model is None:
            raise ValueError(f"Recipe {recipe.name!r} sets learning rates per layer; make_optimizer needs the model.")
        multipliers = learning_rate_multipliers(model, recipe)
    if multipliers:
        optimizer = AdamWMultipliers(
            multipliers, learning_rate=schedule, weight_decay=recipe.weight_decay, global_clipnorm=recipe.global_clipnorm
        )
    else:
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=recipe.weight_decay, global_clipnorm=recipe.global_clipnorm
        )
    if not recipe.decay_all_weights:
        if model is None:
            raise ValueError("make_optimizer needs the model to exclude weights from AdamW's weight decay.")
        excluded = [w for w in model.trainable_weights if no_weight_decay(w)]
        if excluded:
            optimizer.exclude_from_weight_decay(var_list=excluded)
    return optimizer


def compile_model(model, recipe, total_steps, jit_compile="auto"):
    """Compiles with the recipe's optimizer, label-smoothed cross-entropy on logits and accuracy."""
    recipe = get_recipe(recipe)
    model.compile(
        optimizer=make_optimizer(recipe, total_steps, model),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=recipe.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
    return model


# --------------------------------------------------------------------------- #
# Precision for the device
# --------------------------------------------------------------------------- #
def precision_for(device_kind, compute_capability=None):
    """The dtype policy for a device: float16 on pre-Ampere GPUs (T4, V100), bfloat16 on newer GPUs and TPUs.

    Example:
    >>> precision_for("gpu", (7, 5)), precision_for("gpu", (8, 0)), precision_for("cpu")
    ('mixed_float16', 'mixed_bfloat16', 'float32')
    """
    if device_kind == "tpu":
        return "mixed_bfloat16"
    if device_kind == "gpu":
        if compute_capability is not None and tuple(compute_capability) >= (8, 0):
            return "mixed_bfloat16"
        return "mixed_float16"
    return "float32"


def accelerator():
    """(kind, compute capability or None) of the first device of the current backend.

    The kind is "cpu", "gpu" or "tpu"; probing never raises (an error reads as "cpu").

    Example:
    >>> accelerator()[0] in ("cpu", "gpu", "tpu")
    True
    """
    backend = keras.config.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            capability = getattr(device, "compute_capability", None)
            if capability:
                capability = tuple(int(p) for p in str(capability).split("."))
            return device.platform, capability
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return "gpu", torch.cuda.get_device_capability(0)
            return "cpu", None
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return "gpu", details.get("compute_capability")
        if tf.config.list_logical_devices("TPU"):
            return "tpu", None
    except Exception:  # noqa: BLE001 - device probing must never stop training
        pass
    return "cpu", None


def choose_precision():
    """The dtype policy this machine should train in (see `precision_for`)."""
    return precision_for(*accelerator())


# --------------------------------------------------------------------------- #
# Where the training images are augmented
# --------------------------------------------------------------------------- #
AUGMENT_ON = ("auto", "host", "device")


def augment_on_for(choice="auto", device_kind=None, backend=None):
    """"host" or "device": where `choice` augments the training images on this machine.

    "host": in the tf.data pipeline, on the CPU, before a batch reaches the model. Keras's
    augmentation layers draw from a stateful seed generator, so that map runs on one thread
    for seeded runs to repeat: about 320 to 370 fine-tuning images a second at 224 px on 2
    cores (benchmarks/RESULTS.md). "device": in the train step, on the model's device
    (`Augmented`); the pipeline only batches images, in parallel. "auto": "device" on a GPU or
    TPU with JAX or PyTorch; "host" on a CPU (where the model takes the time anyway and where
    the project's seeded fine-tuning numbers were measured) and with TensorFlow, whose
    translation op has no XLA kernel: in the step, it would cost the whole step its XLA
    compilation, a trade no one has measured on a GPU here.

    Args:
        choice: "auto", "host" or "device".
        device_kind: "cpu", "gpu" or "tpu" (None: this machine's, `accelerator()`).
        backend: a Keras backend name (None: the current one).

    Example:
    >>> augment_on_for("auto", "gpu", "jax"), augment_on_for("auto", "gpu", "tensorflow")
    ('device', 'host')
    >>> augment_on_for("auto", "cpu", "jax"), augment_on_for("device", "cpu", "tensorflow")
    ('host', 'device')
    """
    if choice not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {list(AUGMENT_ON)}, got {choice!r}.")
    if choice != "auto":
        return choice
    kind = device_kind or accelerator()[0]
    backend = backend or keras.config.backend()
    return "host" if kind == "cpu" or backend == "tensorflow" else "device"


@keras.saving.register_keras_serializable(package="vitkeras")
class Augmented(keras.Model):
    """`model` behind augmentation layers that act in training only, so augmentation runs in the train step.

    Compile and fit the wrapper; it shares every weight with `model`, which is what you
    evaluate and save afterwards. At inference (training=False) it is `model` exactly.

    Args:
        model: a Keras model taking uint8-range images (values 0-255).
        augmentation: "none", "translate", "basic" or "strong" (`data.make_augmentation`).
        seed: seed of the augmentation layers (a seeded run repeats on one backend and device).

    Example:
    >>> import numpy as np
    >>> inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)])
    >>> wrapped = Augmented(inner, "basic", seed=0)
    >>> x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    >>> same = keras.ops.all(keras.ops.isclose(wrapped(x), inner(x)))  # inference: no augmentation
    >>> bool(keras.ops.convert_to_numpy(same))
    True
    """

    def __init__(self, model, augmentation="basic", seed=0, **kwargs):
        from vitkeras import data

        kwargs.setdefault("name", f"{model.name}_augmented")
        super().__init__(**kwargs)
        self.inner = model
        self.augmentation = augmentation
        self.seed = seed
        # float32 layers: a mixed-precision policy would round the pixels to 16 bits here.
        self.augment = data.make_augmentation(augmentation, seed, dtype="float32")
        if keras.config.backend() == "jax":
            # RandomTranslation says it cannot be compiled (TensorFlow's op has no XLA kernel), and one such
            # layer makes Keras run the whole train step eagerly: 3.8x slower here (benchmarks/RESULTS.md).
            # Its JAX version is jax.numpy throughout and compiles.
            for layer in self.augment:
                layer.supports_jit = True
        if model.built and getattr(model, "inputs", None):
            self.build(model.input_shape)  # built from the start: `fit` with a backup needs it

    def build(self, input_shape):
        for layer in self.augment:
            layer.build(input_shape)
        if not self.inner.built:
            self.inner.build(input_shape)
        self.built = True

    def call(self, images, training=False):
        for layer in self.augment:
            images = layer(images, training=training)  # (B, H, W, C), still 0-255
        return self.inner(images, training=training)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.inner),
                "augmentation": self.augmentation, "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"])
        return cls(**config)


# --------------------------------------------------------------------------- #
# fit with resume
# --------------------------------------------------------------------------- #
def write_json_atomic(path, data):
    """Writes JSON to a temporary file and renames it: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(data, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


class _JSONHistory(keras.callbacks.Callback):
    """Keeps the per-epoch logs in a JSON file, across interruptions and resumes."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_train_begin(self, logs=None):
        self.records = json.loads(self.path.read_text()) if self.path.exists() else []

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        self.records = [r for r in self.records if r["epoch"] < epoch + 1] + [record]
        write_json_atomic(self.path, self.records)


def fit(
    model,
    train,
    epochs,
    steps_per_epoch=None,
    validation=None,
    out_dir=None,
    callbacks=(),
    verbose="auto",
):
    """`model.fit` that survives interruptions when given an `out_dir`.

    With `out_dir`, the training state is backed up after every epoch
    (`keras.callbacks.BackupAndRestore`), so calling `fit` again with the same
    arguments after a crash or a Colab disconnect continues from the last
    finished epoch; the per-epoch history is kept in `out_dir/history.json`.

    Args:
        model: a compiled model.
        train: training batches (a tf.data.Dataset from `vitkeras.data.make_pipeline`).
        epochs: total epochs.
        steps_per_epoch: batches per epoch (needed for repeated datasets).
        validation: optional validation batches.
        out_dir: folder for the backup and history.json (None: no resume, no file).
        callbacks: more Keras callbacks.
        verbose: Keras verbosity ("auto" shows a progress bar).

    Returns:
        The history as a dict {metric: [value per epoch]} including epochs
        finished before an interruption.
    """
    callbacks = list(callbacks)
    history_path = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        history_path = out_dir / "history.json"
        callbacks = [keras.callbacks.BackupAndRestore(str(out_dir / "backup")), _JSONHistory(history_path), *callbacks]
    result = model.fit(
        train,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=False,  # the tf.data pipeline shuffles (seeded); Keras warns that it ignores shuffle=True
    )
    if history_path is None or not history_path.exists():
        return {k: [float(x) for x in v] for k, v in result.history.items()}
    records = json.loads(history_path.read_text())
    keys = [k for k in records[0] if k != "epoch"] if records else []
    return {"epoch": [r["epoch"] for r in records], **{k: [r.get(k, math.nan) for r in records] for k in keys}}


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `seconds` of training time are spent (checked after every batch).

    For comparisons "at the same budget": `steps` counts the batches trained.

    Example:
    >>> budget = TimeBudget(seconds=60)
    >>> budget.seconds
    60
    """

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


# --------------------------------------------------------------------------- #
# Data parallelism
# --------------------------------------------------------------------------- #
class _ReplicaScope:
    """Enters a backend's distribution scope; reports the number of replicas; restores the previous state on exit."""

    def __init__(self, num_replicas, make_inner=None):
        self.num_replicas = num_replicas
        self.make_inner = make_inner
        self.inner = None

    def __enter__(self):
        if self.make_inner is not None:
            self.inner = self.make_inner()
            self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        inner, self.inner = self.inner, None
        return False if inner is None else inner.__exit__(*exc)


def data_parallel(enabled=True):
    """Spreads each batch over all accelerators (or virtual CPU devices) of this machine.

    Use it around building, compiling and training the model:

        with vitkeras.training.data_parallel():
            model = vitkeras.build_vit(...); compile_model(model, ...)
            model.fit(...)

    JAX: `keras.distribution.DataParallel` over every device, set for the
    `with` block only (the previous distribution, usually none, is restored
    after it). TensorFlow: a `tf.distribute.MirroredStrategy` (or a
    TPUStrategy on a TPU) scope. PyTorch: not supported by Keras's
    distribution API; raises ValueError. Nothing changes until the block is entered.

    Returns:
        A context manager; it also exposes `num_replicas`.
    """
    if not enabled:
        return _ReplicaScope(1)
    backend = keras.config.backend()
    if backend == "jax":
        devices = keras.distribution.list_devices()
        return _ReplicaScope(len(devices), lambda: keras.distribution.DataParallel(devices=devices).scope())
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("TPU"):
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.tpu.experimental.initialize_tpu_system(resolver)
            strategy = tf.distribute.TPUStrategy(resolver)
        else:
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
            strategy = tf.distribute.MirroredStrategy(devices)
        return _ReplicaScope(strategy.num_replicas_in_sync, strategy.scope)
    raise ValueError(
        f"Data parallelism is available on the 'jax' and 'tensorflow' backends, not {backend!r}; "
        f"set KERAS_BACKEND=jax or tensorflow."
    )
