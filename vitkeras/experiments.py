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
import functools
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from vitkeras import data as vdata
from vitkeras import models, parallel, pretrained, training

__all__ = [
    "MODELS",
    "DEFAULT_SIZES",
    "DataEfficiencyConfig",
    "TrainConfig",
    "FinetuneConfig",
    "build_model",
    "matched_cnn_width",
    "train_and_evaluate",
    "train_to_convergence",
    "train_linear_probe",
    "fine_tune",
    "data_efficiency",
    "plot_data_efficiency",
    "ShuffledPatchesConfig",
    "shuffled_patches",
    "shuffled_table",
    "plot_shuffled_patches",
    "summary_table",
    "train",
    "finetune",
    "machine_description",
]

MODELS = ("vit", "vit-nopos", "cnn", "hybrid", "pretrained")
SCRATCH_MODELS = ("vit", "vit-nopos", "cnn", "hybrid")
# The default data-efficiency run (embedded dataset, 6 classes, 16x16 images): training
# examples per class, validation examples per class, the ViT, the recipe (its learning rate,
# weight decay and augmentation; see train_to_convergence for the schedule) and the batch.
# Chosen with the measurements in benchmarks/RESULTS.md ("Act 2 in 2.5 minutes"): on the
# light-on-dark shapes both models converge in a few hundred steps; at 10 images per class the
# ViT fits its training set and tests about 35 points below the CNN, at 50 within 3.
DEFAULT_SIZES = (10, 20, 50)
DEFAULT_VALIDATION_PER_CLASS = 50
DEFAULT_EFFICIENCY_PRESET = "Pico/4"
DEFAULT_EFFICIENCY_RECIPE = "scratch"
DEFAULT_EFFICIENCY_BATCH = 128  # 256 made the steps of the largest subset (300 images) twice as dear
# Validation accuracy every this many steps (the patience counts these evaluations).
DEFAULT_EVAL_EVERY = 25
# The settings the photo experiments (notebook 03's CIFAR-10 section, act 3's cats and dogs) were
# measured with before the defaults above changed for the main job's budget (2026-12-06): batch 256,
# an evaluation every 50 steps, one run at a time. Their calls pass it, so their numbers still hold.
PHOTO_PROTOCOL = {"batch_size": 256, "eval_every": 50, "workers": 1}
# The CNN's own learning rate (the ViT keeps the recipe's 1e-3): each model at the rate that suits
# it, as the paper sweeps it per model. On the shapes of any colour (before 2026-12-06), at 1e-3
# the CNN sat on plateaus for 2,200 to 2,800 steps and tested 0.775 to 0.895 at 600 images; at
# 3e-3 it tested 0.980 to 0.995 there, in 21% fewer steps over the default run's three seeds
# (benchmarks/RESULTS.md, "The CNN's own learning rate").
DEFAULT_CNN_LEARNING_RATE = 3e-3
# The shuffled-patches experiment: a small and a large training set (examples per class).
DEFAULT_SHUFFLED_SIZES = (10, 50)
# `train`: epochs, and the fewest optimizer steps of a run.
DEFAULT_EPOCHS = 8
DEFAULT_MIN_STEPS = 400
# Training to convergence: validation accuracy is measured every epoch but at least every
# MIN_EVAL_STEPS steps; a run stops after DEFAULT_PATIENCE evaluations without a new best, and
# never trains more than DEFAULT_MAX_STEPS steps (no default run reaches it).
MIN_EVAL_STEPS = 50
DEFAULT_PATIENCE = 10
DEFAULT_MAX_STEPS = 20_000
# ... and its learning rate drops by this factor after half as many evaluations without a new best
# (`keras.callbacks.ReduceLROnPlateau`): a constant rate leaves the weights bouncing around the best.
PLATEAU_FACTOR = 0.3
# XLA for the training step (`jit_compile`): "auto" leaves every model to Keras (XLA on TensorFlow
# GPUs, not on CPUs; JAX always uses XLA); "vit" compiles the ViTs' steps with XLA on TensorFlow.
# On 2 CPU cores "vit" took the main job's ViT runs from 51-58 to 32-35 ms a step and the whole job
# from 12.0 to 9.3 minutes while its shapes had any colour (the CNN's convolutions run slower under
# XLA, so they keep Keras's choice); the default stays "auto": XLA moves every act-2 number as
# another seed would, and the main job fits its budget without it (benchmarks/RESULTS.md).
JIT_COMPILE = ("auto", "vit", "true", "false")
XLA_MODELS = ("vit", "vit-nopos")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# LP-FT's second stage: at 1,000 training images one epoch (31 steps of batch 32) gained -1.1 to
# +1.3 points over the probe in three seeds, two epochs +3.8 to +4.6 (benchmarks/RESULTS.md).
DEFAULT_FINETUNE_EPOCHS = 2


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
        "device": training.accelerator()[0],
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

    `cli` may hold `flag` (default `--field-name`), `type` (int or float: above 0, unless
    `zero_allowed=True` (0 too) or `signed=True` (any)), `nargs`, `choices` and `required`; a bool
    field becomes a switch.
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
    validation_per_class: int = option(DEFAULT_VALIDATION_PER_CLASS, "validation examples per class, carved "
                                       "(seeded) from the training pool apart from every training subset; "
                                       "they decide when a run has converged", type=int)
    patience: int = option(DEFAULT_PATIENCE, "stop a run after this many evaluations without a better "
                           "validation accuracy, then restore the best weights (the learning rate drops after "
                           "half as many)", type=int)
    max_steps: int = option(DEFAULT_MAX_STEPS, "step cap of one run (a warning says when a run reaches it)",
                            type=int)
    min_delta: float = option(0.0, "the least rise in validation accuracy that counts as a new best for the "
                              "patience and the restored weights", type=float, zero_allowed=True)
    eval_every: int | None = option(DEFAULT_EVAL_EVERY, "steps between validation evaluations (None: one epoch, "
                                    f"at least {MIN_EVAL_STEPS}); patience counts these evaluations", type=int)
    jit_compile: str = option("auto", "XLA for the training step: auto (Keras's choice: no XLA on a CPU with "
                              "TensorFlow), vit (the ViTs with XLA on TensorFlow, the CNN as Keras chooses: 9.3 "
                              "instead of 12.0 minutes for the default run on 2 cores before its dataset changed, "
                              "with other numbers), true or "
                              "false (all models; true on PyTorch: torch.compile)", choices=JIT_COMPILE)
    workers: int | None = option(None, "runs trained at once, each in its own process with its share of the CPU "
                                 "cores (vitkeras.parallel; a run on one thread rounds differently from one on "
                                 "two, so its numbers differ slightly). None: 2 on a CPU with at least 2 cores "
                                 "(a run like the default one took 1.6 instead of 2.4 minutes on 2 cores), 1 on "
                                 "a GPU or TPU, whose memory the processes would share, and 1 in a script run by "
                                 "its path (see default_workers)", type=int)
    seeds: tuple = option((0,), "one run per seed for every size and model (validation split, subset, init, "
                          "shuffling)", nargs="+", type=int, signed=True)
    models: tuple = option(("vit", "cnn"), "models to compare: vit, vit-nopos (no position embeddings), cnn, "
                           "hybrid, pretrained (needs --checkpoint)", nargs="+", choices=MODELS)
    preset: str = option(DEFAULT_EFFICIENCY_PRESET, "ViT preset of the scratch ViT (and the hybrid)")
    cnn_width: int | None = option(None, "CNN width (None: matched to the ViT's parameter count)", type=int)
    cnn_stem_stride: int = option(2, "stride of the CNN's stem (2: a quarter of the compute of 1, the same "
                                  "parameters)", type=int)
    cnn_learning_rate: float = option(DEFAULT_CNN_LEARNING_RATE, "learning rate of the CNN (the ViT, the ViT "
                                      "without position embeddings and the hybrid use the recipe's)", type=float)
    recipe: object = option(DEFAULT_EFFICIENCY_RECIPE, "training recipe of the scratch models (a name in "
                            "training.RECIPES or a training.Recipe); its schedule is replaced by a constant rate lowered "
                            "on plateaus")
    batch_size: int = option(DEFAULT_EFFICIENCY_BATCH, "training batch size of the scratch models (smaller "
                             "training sets train on all their images at once)", type=int)
    shuffle_patches: bool = option(False, "shuffle every image's patches (the ViT preset's patch size) with one "
                                   "fixed random permutation, the same for train, validation and test")
    image_size: int | None = option(None, "resize images to this size (None: the dataset's own; 16 for shapes)",
                                    type=int)
    shapes_sizes: tuple | None = option(None, "(train, test) images generated for the shapes datasets "
                                        "(None: 18,000 and 2,400)", nargs=2, type=int)
    checkpoint: str | None = option(None, "pretrained checkpoint (directory or Hub id) for the pretrained model")
    pretrained_image_size: int = option(112, "resolution the pretrained model is fine-tuned at (images are "
                                        "resized to it; a multiple of the checkpoint's patch size)", type=int)
    pretrained_recipe: str = option(training.DEFAULT_FINETUNE_RECIPE, "fine-tuning recipe of the pretrained model",
                                    choices=tuple(training.FINETUNE_RECIPES))
    pretrained_epochs: int = option(DEFAULT_FINETUNE_EPOCHS, "fine-tuning epochs of the pretrained model", type=int)
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
        if self.shuffle_patches and "pretrained" in self.models:
            raise ValueError("shuffle_patches applies to the scratch models only; remove 'pretrained' from models.")
        for size in self.sizes:
            _check_positive("each of sizes", size)
        for name in ("validation_per_class", "patience", "max_steps", "pretrained_epochs", "batch_size"):
            _check_positive(name, getattr(self, name))
        _check_positive("eval_every", self.eval_every, allow_none=True)
        _check_positive("workers", self.workers, allow_none=True)
        delta = self.min_delta
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 <= delta < 1:
            raise ValueError(f"min_delta must be a number from 0 up to (not including) 1, got {delta!r}.")
        rate = self.cnn_learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            raise ValueError(f"cnn_learning_rate must be a number between 0 and 1, got {rate!r}.")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("jit_compile", self.jit_compile, JIT_COMPILE)
        _check_choice("pretrained_recipe", self.pretrained_recipe, training.FINETUNE_RECIPES)
        scratch_recipe(self.recipe)


@dataclasses.dataclass(frozen=True)
class ShuffledPatchesConfig(DataEfficiencyConfig):
    """Options of `shuffled_patches`: the data-efficiency runs on original and on patch-shuffled images."""

    sizes: tuple = option(DEFAULT_SHUFFLED_SIZES, "training examples per class, one stratified seeded subset per "
                          "size", nargs="+", type=int)
    models: tuple = option(("vit", "vit-nopos", "cnn"), "models to compare: vit, vit-nopos (no position "
                           "embeddings), cnn, hybrid", nargs="+", choices=SCRATCH_MODELS)
    shuffle_patches: bool = option(False, "not an option here: both conditions always run", cli=False)
    out: str = option("runs/shuffled_patches", "output folder: original/ and shuffled/ (each a resumable "
                      "data-efficiency run) and shuffled_patches.png")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Options of `train`: one model on one dataset's train split, tested on its test split."""

    model: str = option("vit", "vit, vit-nopos, cnn or hybrid", choices=SCRATCH_MODELS)
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
    epochs: int = option(DEFAULT_FINETUNE_EPOCHS, "fine-tuning epochs over the training split (LP-FT: after the "
                         "probe)", type=int)
    batch_size: int | None = option(None, "batch size (None: the recipe's, 32; paper_sgd 512)", type=int)
    learning_rate: float | None = option(None, "peak learning rate of the pretrained weights (None: the recipe's; "
                                         "lp_ft scales it down below 1,000 training images)",
                                         type=float)
    train_size: int | None = option(None, "use this many training images, a stratified seeded sample", type=int)
    test_size: int | None = option(None, "use this many test images, a stratified seeded sample", type=int)
    validation_size: int = option(200, "validation images (a stratified seeded sample of the validation split, "
                                  "all of it if smaller) on which LP-FT keeps the probe unless fine-tuning scores "
                                  "higher; 0: no check", type=int, zero_allowed=True)
    data_dir: str | None = option(None, "tensorflow-datasets folder with a local copy")
    cache_dir: str | None = option(None, "Hugging Face download cache (default ~/.cache/huggingface)")
    cache_gib: float = option(vdata.DEFAULT_CACHE_GIB, "hold the decoded, resized training images in memory after "
                              "their first pass when they take at most this many GiB (0: decode every epoch)",
                              type=float, zero_allowed=True)
    augment_on: str = option("auto", "where the training images are augmented: host (the tf.data pipeline, on one "
                             "CPU thread so seeded runs repeat), device (in the train step, on the GPU), auto "
                             "(device on a GPU or TPU with JAX or PyTorch; host on a CPU, and with TensorFlow, "
                             "whose translation op cannot be compiled with XLA)", choices=training.AUGMENT_ON)
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
        if isinstance(self.validation_size, bool) or not isinstance(self.validation_size, int) \
                or self.validation_size < 0:
            raise ValueError(f"validation_size must be a whole number >= 0 (0: no check), got {self.validation_size!r}.")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}.")
        vdata.check_cache_limit(self.cache_gib, "cache_gib")
        _check_choice("augment_on", self.augment_on, training.AUGMENT_ON)
        _check_choice("precision", self.precision, PRECISIONS)


# --------------------------------------------------------------------------- #
# Models and one training run
# --------------------------------------------------------------------------- #
def build_model(kind, image_size, num_classes, vit_preset="Nano/4", cnn_width=None, seed=0, cnn_stem_stride=1,
                **vit_overrides):
    """One of the scratch models: "vit", "vit-nopos" (no position embeddings), "cnn" (width matched to
    the ViT unless given) or "hybrid"."""
    if kind in ("vit", "vit-nopos"):
        if kind == "vit-nopos":  # exactly invariant to the order of the patches
            vit_overrides = {**vit_overrides, "position_embedding": "none"}
        return models.build_vit(vit_preset, image_size=image_size, num_classes=num_classes, seed=seed, **vit_overrides)
    if kind == "cnn":
        if cnn_width is None:
            target = models.build_vit(vit_preset, image_size=image_size, num_classes=num_classes).count_params()
            cnn_width = matched_cnn_width(target, image_size, num_classes)
        return models.build_cnn(image_size, num_classes, width=cnn_width, seed=seed, stem_stride=cnn_stem_stride)
    if kind == "hybrid":
        return models.build_hybrid_vit(
            vit_preset, image_size=image_size, num_classes=num_classes, stem_width=16, stem_stages=2, seed=seed,
            **vit_overrides,
        )
    raise ValueError(f"Unknown model kind {kind!r}; allowed: {list(SCRATCH_MODELS)} (and 'pretrained' in "
                     f"data_efficiency).")


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


class _Progress(keras.callbacks.Callback):
    """Logs a run's step and validation accuracy at most every `every` seconds (`log`: print-like)."""

    def __init__(self, log, label, steps_per_evaluation, every=15.0):
        super().__init__()
        self.log, self.label, self.steps, self.every = log, label, steps_per_evaluation, every

    def on_train_begin(self, logs=None):
        self.start = self.last = time.perf_counter()
        self.best = 0.0

    def on_epoch_end(self, epoch, logs=None):
        self.best = max(self.best, float((logs or {}).get("val_accuracy", 0.0)))
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            self.log(f"    {self.label}: step {(epoch + 1) * self.steps}, validation accuracy "
                     f"{float(logs.get('val_accuracy', math.nan)):.3f} (best {self.best:.3f}), {now - self.start:.0f} s")


def reset_optimizer(model, learning_rate):
    """A compiled model's optimizer as if freshly compiled: step counter and moments zeroed, learning rate set."""
    for variable in model.optimizer.variables:
        variable.assign(keras.ops.zeros(variable.shape, variable.dtype))
    model.optimizer.learning_rate = learning_rate


def train_to_convergence(model, train_data, validation_data, recipe="scratch", batch_size=None, seed=0,
                         patience=DEFAULT_PATIENCE, max_steps=DEFAULT_MAX_STEPS, eval_every=None, min_delta=0.0,
                         patch_order=None, callbacks=(), verbose=0, log=None, label="run", jit_compile="auto"):
    """Trains until validation accuracy stops improving, and ends with the best weights.

    Validation accuracy is measured every `eval_every` steps (default: one
    epoch, at least `MIN_EVAL_STEPS`). The recipe's learning rate is used as
    it is (its schedule is replaced) until `patience // 2` evaluations pass
    without a new best (one more than `min_delta` above the last best), then
    multiplied by `PLATEAU_FACTOR` (`keras.callbacks.ReduceLROnPlateau`),
    again after each further such stretch; after `patience` evaluations
    without a new best, training stops and the best evaluation's weights are
    restored (`keras.callbacks.EarlyStopping`). `max_steps` caps a run that
    never settles: hitting it is reported (`hit_step_cap`) and logged as a
    warning.

    A model that an earlier call compiled keeps its compiled training step and
    starts with a fresh optimizer state: give it new weights with `set_weights`
    to reuse it for another run of the same recipe and batch size without
    tracing the step again (seconds per model, see `data_efficiency`).

    Args:
        model: an uncompiled Keras model with a "head" of logits.
        train_data, validation_data: ArrayData (disjoint).
        recipe: a scratch recipe (name or Recipe).
        min_delta: the least rise in validation accuracy that counts as a new best; a smaller
            rise (one or two validation images) neither resets the patience nor moves the best weights.
        patch_order: (patch size, order) to shuffle the patches of every image (`data.permute_patches`).
        callbacks: more Keras callbacks (called after the early stopping's).
        log, label: progress lines (None: silent) and the run's name in them.
        jit_compile: XLA for the training step (`keras.Model.compile`); a model compiled by an
            earlier call keeps its own.

    Returns:
        {"steps", "best_step", "validation_accuracy", "hit_step_cap", "seconds", "history"}.

    Example:
    >>> from vitkeras import data
    >>> pool = data.make_shapes(60, image_size=16, num_classes=2)
    >>> model = build_model("vit", 16, 2, seed=0)
    >>> run = train_to_convergence(model, pool.take(range(40)), pool.take(range(40, 60)), patience=1, max_steps=4)
    >>> run["steps"] <= 4
    True
    """
    recipe = scratch_recipe(recipe).replace(schedule="constant", warmup_fraction=0.0)
    batch_size = min(batch_size or recipe.batch_size, len(train_data))
    interval = min(eval_every or max(len(train_data) // batch_size, MIN_EVAL_STEPS), max_steps)
    evaluations = max(1, max_steps // interval)
    train_batches = vdata.make_pipeline(train_data, batch_size, training=True, augmentation=recipe.augmentation,
                                        seed=seed, repeat=True, patch_order=patch_order)
    validation_batches = vdata.make_pipeline(validation_data, 256, num_classes=train_data.num_classes,
                                             patch_order=patch_order)
    if getattr(model, "optimizer", None) is None:
        training.compile_model(model, recipe, total_steps=max_steps, jit_compile=jit_compile)
        # On JAX and PyTorch, a model's first `fit` reads one training batch to build its loss and
        # metrics, then restarts the stream; the seeded reshuffle and the augmentation layers' seed
        # generators have moved on by then, so a fresh model would see other batches than a reused
        # one. Building them on the validation batches first gives both the same training stream.
        evaluate(model, validation_batches)
    else:
        reset_optimizer(model, recipe.learning_rate)
    stopper = keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=patience, min_delta=min_delta,
                                            restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau("val_accuracy", mode="max", factor=PLATEAU_FACTOR,
                                                patience=max(1, patience // 2), min_delta=min_delta)
    callbacks = [plateau, stopper, *callbacks] + ([_Progress(log, label, interval)] if log else [])
    start = time.perf_counter()
    history = training.fit(model, train_batches, evaluations, interval, validation=validation_batches,
                           callbacks=callbacks, verbose=verbose)
    seconds = time.perf_counter() - start
    scores = history["val_accuracy"]
    best = int(stopper.best_epoch)  # the evaluation whose weights were restored
    hit_cap = len(scores) == evaluations and best > len(scores) - 1 - patience
    if hit_cap and log:
        log(f"    WARNING: {label} reached the step cap ({evaluations * interval} steps) while its validation "
            f"accuracy was still improving; raise max_steps for a converged result.")
    return {"steps": len(scores) * interval, "best_step": (best + 1) * interval,
            "validation_accuracy": float(scores[best]), "hit_step_cap": bool(hit_cap),
            "seconds": round(seconds, 2), "history": history}


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
              out_dir=None, verbose=0, resize=None, log=None, validation=None, augment_on="auto"):
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
        validation: held-out images (ArrayData, uint8). With a recipe that has
            `keep_probe_unless_better` (LP-FT), the probe and the fine-tuned weights are
            both scored on them and the probe's are kept unless the fine-tuned ones score
            higher. None: no check, the fine-tuned weights are kept.
        augment_on: where the fine-tuning images are augmented: "host" (the tf.data pipeline),
            "device" (the train step, `training.Augmented`) or "auto" (`training.augment_on_for`:
            the device on a GPU or TPU with JAX or PyTorch, else the host).

    Returns:
        {"probe": {...} or None, "seconds": all stages, "finetune_seconds", "seconds_per_epoch",
         "steps_per_epoch", "augment_on", "history", "selection": {...} or None}
    """
    recipe = training.get_recipe(recipe)
    augment_on = training.augment_on_for(augment_on)
    batch = min(recipe.batch_size, num_examples)
    start = time.perf_counter()
    probe = None
    if linear_probe or recipe.linear_probe_first:
        plain = vdata.make_pipeline(train, 64, num_classes, rescale=1.0, resize=resize)
        probe = train_linear_probe(model, plain, recipe, seed=seed)
        if log:
            log(f"  linear probe: {num_examples} images, features in {probe['feature_seconds']:.0f} s, "
                f"head trained to {probe['train_accuracy']:.3f} training accuracy")
    history, steps_per_epoch, finetune_seconds, selection = {}, 0, 0.0, None
    if not linear_probe:
        recipe = recipe.replace(learning_rate=training.learning_rate_for(recipe, num_examples))
        steps_per_epoch = max(1, num_examples // batch)
        on_host = augment_on == "host"
        batches = vdata.make_pipeline(train, batch, num_classes, training=True, rescale=1.0, seed=seed, repeat=True,
                                      augmentation=recipe.augmentation if on_host else "none", resize=resize)
        for layer in model.layers:
            layer.trainable = True
        # On the device, the wrapper (same weights) trains; `model` is compiled too, for evaluate and save.
        trainee = model if on_host else training.Augmented(model, recipe.augmentation, seed=seed)
        training.compile_model(trainee, recipe, total_steps=epochs * steps_per_epoch)
        if not on_host:
            training.compile_model(model, recipe, total_steps=1)
        check = _ProbeCheck(model, validation, num_classes, resize) \
            if probe and recipe.keep_probe_unless_better and validation is not None else None
        fit_start = time.perf_counter()
        history = training.fit(trainee, batches, epochs, steps_per_epoch, out_dir=out_dir, verbose=verbose)
        finetune_seconds = time.perf_counter() - fit_start
        selection = check.choose() if check else None
        if log and selection:
            log(f"  accuracy: probe {selection['probe']:.4f}, fine-tuned {selection['fine_tuned']:.4f} "
                f"on {selection['examples']} validation images; kept the {selection['kept'].replace('_', '-')} weights")
    else:
        training.compile_model(model, recipe, total_steps=1)  # loss and accuracy for evaluate and save
    return {
        "probe": probe,
        "seconds": round(time.perf_counter() - start, 2),
        "finetune_seconds": round(finetune_seconds, 2),
        "seconds_per_epoch": round(finetune_seconds / epochs, 2) if not linear_probe else None,
        "steps_per_epoch": steps_per_epoch,
        "augment_on": None if linear_probe else augment_on,
        "batch_size": batch,
        "learning_rate": None if linear_probe else recipe.learning_rate,
        "history": history,
        "selection": selection,
    }


class _ProbeCheck:
    """Scores the probe's weights on validation images now, and `choose()` keeps them unless fine-tuning beat them.

    The probe's weights stay in memory (a copy of every weight) until `choose()`.
    Ties keep the probe: the fine-tuned weights must earn their place.
    """

    def __init__(self, model, validation, num_classes, resize):
        self.model = model
        self.batches = vdata.make_pipeline(validation, 64, num_classes, rescale=1.0, resize=resize)
        self.examples = len(validation)
        self.probe_accuracy = evaluate(model, self.batches)
        self.probe_weights = model.get_weights()

    def choose(self):
        fine_tuned = evaluate(self.model, self.batches)
        kept = "fine_tuned" if fine_tuned > self.probe_accuracy else "probe"
        if kept == "probe":
            self.model.set_weights(self.probe_weights)
        self.probe_weights = None
        return {"probe": self.probe_accuracy, "fine_tuned": fine_tuned, "kept": kept, "examples": self.examples}


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
    """(train stream, train info, test stream, test info, cached bytes), stratified seeded subsets when sizes
    are given.

    The training stream keeps its decoded images in memory after the first pass when they fit in
    `config.cache_gib` (`data.cache_decoded`): the probe's pass fills it, the epochs read it.
    """
    train, train_info = vdata.load(config.dataset, "train", image_size=size, data_dir=config.data_dir,
                                   max_examples=config.train_size, subset_seed=config.seed)
    train, cached = vdata.cache_decoded(train, train_info.num_examples, size, config.cache_gib)
    test, test_info = vdata.load(config.dataset, "test", image_size=size, data_dir=config.data_dir,
                                 max_examples=config.test_size, subset_seed=config.seed)
    return train, train_info, test, test_info, cached


def _finetune_validation(config, recipe, size):
    """The validation images LP-FT checks itself on: a stratified seeded sample of the validation split.

    None when nothing would use them (validation_size 0, a linear probe, a recipe without the
    check). A validation split with no readable image is an error, before any training.
    """
    if not config.validation_size or config.linear_probe or not recipe.keep_probe_unless_better:
        return None
    try:
        validation, info = vdata.load(config.dataset, "validation", image_size=size, data_dir=config.data_dir)
    except ValueError as error:
        raise ValueError(f"{error} LP-FT checks the fine-tuned weights on validation images; give the dataset "
                         f"some, or fine-tune without the check (validation_size=0, CLI --validation-size 0).") from error
    if info.num_examples > config.validation_size:
        validation, info = vdata.load(config.dataset, "validation", image_size=size, data_dir=config.data_dir,
                                      max_examples=config.validation_size, subset_seed=config.seed)
    images, labels = zip(*validation.as_numpy_iterator())  # a few hundred images: held in memory
    return vdata.ArrayData(np.stack(images), np.array(labels, dtype="int32"), tuple(info.class_names))


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
        train, train_info, test, test_info, cached = _finetune_data(config, size)
        validation = _finetune_validation(config, recipe, size)
        model = pretrained.load_pretrained(directory, image_size=size, num_classes=train_info.num_classes,
                                           linear_probe=config.linear_probe, seed=config.seed)
        log(f"fine-tuning {info.model_type} from {config.checkpoint} ({model.count_params():,} parameters) on "
            f"{config.dataset} at {size}x{size}: {train_info.num_examples} training images, recipe {recipe.name}"
            f"{' (linear probe only)' if config.linear_probe else ''}; {_cache_line(cached, config.cache_gib)}")
        run = fine_tune(model, train, train_info.num_examples, train_info.num_classes, recipe, config.epochs,
                        linear_probe=config.linear_probe, seed=config.seed, out_dir=out,
                        verbose=_keras_verbosity(config.verbose), log=log, validation=validation,
                        augment_on=config.augment_on)
        accuracy = evaluate(model, vdata.make_pipeline(test, 64, train_info.num_classes, rescale=1.0))
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / "model.keras")
    result = _finetune_result(config, recipe, info, size, train_info, test_info, model, run, accuracy, policy,
                              cached)
    training.write_json_atomic(out / "result.json", result)
    log(f"test accuracy {accuracy:.4f} ({run['seconds']:.0f} s of training); wrote {out / 'result.json'}")
    return result


def _jsonable(options):
    """Config values as JSON can store them (paths as strings, tuples as lists)."""
    return {k: str(v) if isinstance(v, os.PathLike) else list(v) if isinstance(v, tuple) else v
            for k, v in options.items()}


def _cache_line(cached, limit_gib):
    """What `finetune` says about its training images: held in memory, or read again every epoch."""
    if cached:
        return f"decoded training images held in memory after the first pass ({cached / 2**20:,.0f} MiB)"
    if not limit_gib:
        return "decoded training images read again every epoch (cache_gib=0)"
    return f"decoded training images read again every epoch (they would take more than cache_gib={limit_gib:g} GiB)"


def _finetune_result(config, recipe, info, size, train_info, test_info, model, run, accuracy, policy, cached):
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
        "cached_bytes": cached,
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
    """(train pool, test set) as ArrayData; sizes the pool cannot hold beside the validation split are an error."""
    train_size, test_size = config.shapes_sizes or (None, None)
    train_all = vdata.load_arrays(config.dataset, "train", image_size=config.image_size, data_dir=config.data_dir,
                                  shapes_size=train_size)
    test = vdata.load_arrays(config.dataset, "test", image_size=config.image_size, data_dir=config.data_dir,
                             shapes_size=test_size)
    largest = int(np.bincount(train_all.labels).min()) - config.validation_per_class
    if max(config.sizes) > largest:
        raise ValueError(f"sizes go up to {max(config.sizes)} per class, but {config.dataset!r} has only "
                         f"{largest + config.validation_per_class} per class, {config.validation_per_class} of them "
                         f"for validation; allowed sizes: 1 to {largest}.")
    return train_all, test


def _validation_split(train_all, per_class, seed):
    """(validation set, the rest of the pool): the validation examples are stratified and seeded."""
    chosen = vdata.stratified_subset(train_all.labels, per_class, seed=seed)
    rest = np.setdiff1d(np.arange(len(train_all)), chosen)
    return train_all.take(chosen), train_all.take(rest)


def _patch_order(config, size_px):
    """(patch size, permutation) when the config shuffles patches, else None (one fixed permutation: seed 0)."""
    if not config.shuffle_patches:
        return None
    patch = models.get_config(config.preset).patch_size
    return patch, vdata.patch_permutation(size_px, patch, seed=0)


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
            params[kind] = build_model(kind, size_px, num_classes, config.preset, width,
                                       cnn_stem_stride=config.cnn_stem_stride).count_params()
    return width, params


def _efficiency_settings(config, train_all, test, width, params, policy):
    recipe = training.get_recipe(config.recipe)
    # What decides every point's result; sizes, models and seeds only choose which points
    # run, so a rerun with more of them continues the same results file.
    key = dict(
        dataset=config.dataset, vit_preset=config.preset, cnn_width=config.cnn_width, cnn_stem_stride=config.cnn_stem_stride,
        cnn_learning_rate=config.cnn_learning_rate,
        # A named recipe by name; a modified one by all its fields.
        recipe=recipe.name if recipe == training.RECIPES.get(recipe.name) else dataclasses.asdict(recipe),
        batch_size=config.batch_size, image_size=int(train_all.images.shape[1]),
        validation_per_class=config.validation_per_class, patience=config.patience, max_steps=config.max_steps,
        plateau_factor=PLATEAU_FACTOR, shuffle_patches=config.shuffle_patches,
    )
    if config.shapes_sizes:
        key["shapes_sizes"] = list(config.shapes_sizes)
    if config.eval_every:  # only when set, so results files written before the option still resume
        key["eval_every"] = config.eval_every
    if config.min_delta:  # likewise
        key["min_delta"] = config.min_delta
    if config.jit_compile != "auto":  # likewise; XLA orders the arithmetic differently: other numbers
        key["jit_compile"] = config.jit_compile
    if "pretrained" in config.models:
        key.update(checkpoint=str(config.checkpoint), pretrained_image_size=config.pretrained_image_size,
                   pretrained_recipe=dataclasses.asdict(training.get_recipe(config.pretrained_recipe)),
                   pretrained_epochs=config.pretrained_epochs)
    order = _patch_order(config, int(train_all.images.shape[1]))
    return {
        "key": json.dumps(key, sort_keys=True),
        **key,
        "sizes": sorted(config.sizes),
        "models": list(config.models),
        "seeds": list(config.seeds),
        "parameters": params,
        "cnn_width_used": width,
        "recipe_details": dataclasses.asdict(recipe),
        "patch_order": None if order is None else order[1].tolist(),
        "train_pool": len(train_all),
        "test_size": len(test),
        "num_classes": train_all.num_classes,
        "precision": policy,
        "machine": machine_description(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _pretrained_point(config, subset, validation, test, seed):
    """The 'pretrained' model: the checkpoint fine-tuned with its recipe for a fixed number of epochs."""
    size, num_classes = config.pretrained_image_size, subset.num_classes
    model = pretrained.load_pretrained(config.checkpoint, image_size=size, num_classes=num_classes,
                                       cache_dir=config.cache_dir, seed=seed)
    run = fine_tune(model, subset, len(subset), num_classes, config.pretrained_recipe, config.pretrained_epochs,
                    seed=seed, verbose=_keras_verbosity(config.verbose, quiet=0), resize=size, validation=validation)
    score = {name: evaluate(model, vdata.make_pipeline(data, 64, num_classes, rescale=1.0, resize=size))
             for name, data in (("train", subset), ("validation", validation), ("test", test))}
    steps = config.pretrained_epochs * math.ceil(len(subset) / training.get_recipe(config.pretrained_recipe).batch_size)
    return {"train_accuracy": score["train"], "validation_accuracy": score["validation"],
            "test_accuracy": score["test"], "steps": steps, "best_step": steps, "hit_step_cap": False,
            "seconds": run["seconds"], "kept": (run["selection"] or {}).get("kept")}


def _efficiency_point(config, kind, subset, validation, test, width, seed, log, compiled):
    """Trains one (model, subset, seed) point and returns its result row (without bookkeeping fields).

    `compiled` maps a model kind to the model its previous run compiled: TensorFlow takes about
    8 s on 2 cores to trace a ViT's training step (JAX about 4 s), longer than a small run trains,
    so every run of a kind reuses that model with the new run's freshly initialised weights; it
    trains exactly as a freshly built model would (see `train_to_convergence`).
    """
    if kind == "pretrained":
        keras.backend.clear_session()
        return _pretrained_point(config, subset, validation, test, seed)
    model = build_model(kind, subset.images.shape[1], subset.num_classes, config.preset, width, seed=seed,
                        cnn_stem_stride=config.cnn_stem_stride)
    if kind in compiled:  # reuse the compiled training step: tracing it again costs seconds per run
        compiled[kind].set_weights(model.get_weights())
        model = compiled[kind]
    compiled[kind] = model
    order = _patch_order(config, int(subset.images.shape[1]))
    recipe = scratch_recipe(config.recipe)
    if kind == "cnn":
        recipe = recipe.replace(learning_rate=config.cnn_learning_rate)
    run = train_to_convergence(
        model, subset, validation, recipe, batch_size=config.batch_size, seed=seed, patience=config.patience,
        max_steps=config.max_steps, eval_every=config.eval_every, min_delta=config.min_delta, patch_order=order,
        verbose=_keras_verbosity(config.verbose, quiet=0),
        log=log, label=f"{kind} n={len(subset)} seed={seed}", jit_compile=_jit_compile(config.jit_compile, kind),
    )

    def accuracy(data):
        return evaluate(model, vdata.make_pipeline(data, 256, subset.num_classes, patch_order=order))

    return {"train_accuracy": accuracy(subset), "validation_accuracy": run["validation_accuracy"],
            "test_accuracy": accuracy(test), "steps": run["steps"], "best_step": run["best_step"],
            "hit_step_cap": run["hit_step_cap"], "seconds": run["seconds"]}


def _jit_compile(choice, kind):
    """`keras.Model.compile`'s jit_compile for a model kind under a `JIT_COMPILE` choice.

    "vit" turns XLA on for the ViTs on TensorFlow only: JAX compiles every step with XLA
    anyway, and on PyTorch `jit_compile=True` means `torch.compile`, another compiler.

    Example:
    >>> _jit_compile("vit", "cnn"), _jit_compile("false", "vit"), _jit_compile("true", "cnn")
    ('auto', False, True)
    """
    if choice == "vit":
        return True if kind in XLA_MODELS and keras.backend.backend() == "tensorflow" else "auto"
    return {"auto": "auto", "true": True, "false": False}[choice]


def _time_left(results, pending, workers=1):
    """Seconds the `pending` (model, size) points will take, from finished points (None before any finished).

    A point is estimated as the mean of the finished points of its model and size, else of its
    model: trained to convergence, a run takes a similar number of steps whatever its size
    (525 to 1,375 steps from 60 to 300 images in the default run's three seeds). With
    several workers the sum is shared among them. A rough guide.
    """
    total = 0.0
    for kind, size in pending:
        same = [r["seconds"] for r in results if r["model"] == kind]
        if not same:
            return None
        exact = [r["seconds"] for r in results if r["model"] == kind and r["train_size"] == size]
        total += np.mean(exact or same)
    return total / max(1, min(workers, len(pending)))


@dataclasses.dataclass
class _EfficiencyState:
    """What every run of `data_efficiency` needs, built once per process: the data, and compiled models.

    `compiled` maps a model kind to the model its previous run in this process compiled (see
    `_efficiency_point`).
    """

    config: DataEfficiencyConfig
    cnn_width: int | None
    train_all: vdata.ArrayData
    test: vdata.ArrayData
    compiled: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, config, cnn_width):
        """In a worker process: the experiment's precision policy, and its data loaded again."""
        keras.config.set_dtype_policy(_Precision(config.precision).policy)
        return cls(config, cnn_width, *_efficiency_data(config))


def _efficiency_task(state, task, log):
    """One (seed, training-set size, model kind) point: its validation split and subset, trained and scored."""
    seed, size, kind = task
    config, train_all = state.config, state.train_all
    validation, rest = _validation_split(train_all, config.validation_per_class, seed)
    subset = rest.take(vdata.stratified_subset(rest.labels, size // train_all.num_classes, seed=seed))
    return _efficiency_point(config, kind, subset, validation, state.test, state.cnn_width, seed, log,
                             state.compiled)


def default_workers():
    """Runs trained at once when `workers` is None: 2 on a CPU with at least 2 cores, else 1.

    The main job's small models leave a second core nearly idle: their steps at batches of 60
    to 128 cost little more on one thread than on two, so two runs at a time took 1 min 34 s where
    one took 2 min 25 s (5, 15 and 50 images per class; benchmarks/RESULTS.md, "Act 2 in 2.5 minutes").

    A script run by its path (`python train.py`) gets 1: each worker process imports it again, so a
    call outside `if __name__ == "__main__":` would fail there, and whether it has that guard cannot
    be seen from here (pass `workers=2` in a guarded script). The CLI (`python -m vitkeras`), a
    notebook and `python -c` get 2.

    Example:
    >>> default_workers() in (1, 2)
    True
    """
    if training.accelerator()[0] != "cpu":
        return 1
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and getattr(main, "__spec__", None) is None:  # a script run by path
        return 1
    return 2 if parallel.available_cores() >= 2 else 1


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def data_efficiency(config=None, log=print, **options):
    """ViT vs CNN (vs a fine-tuned pretrained ViT) accuracy as the training set grows, every run converged.

    For every seed, a stratified seeded validation split is carved from the
    training pool; for every size, a stratified seeded subset of the rest trains
    each model until its validation accuracy stops improving (best weights
    restored, see `train_to_convergence`). Training, validation and test
    accuracy are recorded. Results are written to `out/results.json` after every
    point; a rerun with the same settings skips finished points (and one with
    more sizes, models or seeds adds only the new ones), with other settings it
    refuses (delete the file or use another `out`). The summary holds the
    points this config asks for.

    With `workers` above 1, that many runs train at once, each in its own
    process with its share of the cores (`parallel.run_tasks`); this process
    writes every result as it comes in. A run's result does not depend on
    which process trains it, but a different number of threads can round
    differently, so its numbers may differ slightly from a one-process run's.

    Args:
        config: a `DataEfficiencyConfig` (None: the defaults, the course's main job).
        log: function that prints progress.
        **options: `DataEfficiencyConfig` fields that replace the config's.

    Returns:
        {"settings": {...}, "results": [{"model", "train_size", "seed", "train_accuracy",
        "validation_accuracy", "test_accuracy", "steps", "best_step", "hit_step_cap", "seconds", ...}]}
    """
    config = config_from(DataEfficiencyConfig, config, options)
    config.validate()
    out = Path(config.out)
    start = time.perf_counter()
    with _Precision(config.precision) as policy:
        train_all, test = _efficiency_data(config)
        width, params = _efficiency_models(config, int(train_all.images.shape[1]), train_all.num_classes)
        settings = _efficiency_settings(config, train_all, test, width, params, policy)
        results = _load_results(out / "results.json", settings)
        classes = train_all.num_classes
        plan = [(seed, per_class * classes, kind) for seed in config.seeds for per_class in sorted(config.sizes)
                for kind in config.models]
        done = {(r["model"], r["train_size"], r["seed"]) for r in results}
        tasks = [(seed, size, kind) for seed, size, kind in plan if (kind, size, seed) not in done]
        workers = config.workers or default_workers()
        settings["workers"] = workers
        log(f"data-efficiency on {config.dataset}: {classes} classes, {len(plan)} runs ({len(plan) - len(tasks)} "
            f"already done), validation {config.validation_per_class * classes}, test {len(test)}, parameters "
            f"{params}" + (f", {workers} runs at a time" if workers > 1 and len(tasks) > 1 else ""))

        def save(task, row):
            seed, size, kind = task
            results.append({"model": kind, "train_size": size, "seed": seed, **row, "parameters": params[kind]})
            done.add((kind, size, seed))
            training.write_json_atomic(out / "results.json", {"settings": settings, "results": results})
            left = _time_left(results, [(k, n) for s, n, k in tasks if (k, n, s) not in done], workers)
            log(f"[{len(done)}/{len(plan)}] {kind:<9} n={size:>6} seed={seed}: train {row['train_accuracy']:.3f}, "
                f"validation {row['validation_accuracy']:.3f}, test {row['test_accuracy']:.3f} "
                f"({row['steps']} steps, {row['seconds']:.0f} s) | {_clock(time.perf_counter() - start)} elapsed"
                + ("" if left is None else f", about {_clock(left)} left"))

        state = _EfficiencyState(config, width, train_all, test)
        parallel.run_tasks(_efficiency_task, tasks, functools.partial(_EfficiencyState.load, config, width), save,
                           workers=workers, key=lambda task: task[2], log=log, state=state)
    planned = {(kind, size, seed) for seed, size, kind in plan}
    summary = {"settings": settings,
               "results": [r for r in results if (r["model"], r["train_size"], r["seed"]) in planned]}
    plot_data_efficiency(summary, out / "data_efficiency.png")
    return summary


def summary_table(summary):
    """Test accuracy per model (columns) and training size (rows), mean over seeds, as text.

    Each cell is "test (train)" when the runs recorded their training accuracy.

    Example:
    >>> print(summary_table({"results": [{"model": "vit", "train_size": 60, "test_accuracy": 0.5},
    ...                                  {"model": "cnn", "train_size": 60, "test_accuracy": 0.75}]}))
    train size |    vit |    cnn | cnn - vit
            60 |  0.500 |  0.750 |  +25.0 pts
    """
    results = summary["results"]
    kinds = [k for k in MODELS if any(r["model"] == k for r in results)]
    both = {"vit", "cnn"} <= set(kinds)
    with_train = all("train_accuracy" in r for r in results)
    width = max(14 if with_train else 6, *(len(k) for k in kinds))
    lines = ["train size | " + " | ".join(f"{k + (' test (train)' if with_train else ''):>{width}}" for k in kinds)
             + (" | cnn - vit" if both else "")]
    for size in sorted({r["train_size"] for r in results}):
        cells, means = [], {}
        for kind in kinds:
            rows = [r for r in results if r["model"] == kind and r["train_size"] == size]
            means[kind] = np.mean([r["test_accuracy"] for r in rows]) if rows else math.nan
            train = f" ({np.mean([r['train_accuracy'] for r in rows]):.3f})" if with_train and rows else ""
            cells.append(f"{f'{means[kind]:.3f}{train}':>{width}}")
        row = f"{size:>10} | " + " | ".join(cells)
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


def _save_figure(figure, path):
    """Writes a PNG atomically (an interrupted save leaves the previous figure)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(path).with_name(f".{Path(path).name}.tmp.png")
    figure.savefig(temporary, dpi=120)
    os.replace(temporary, path)


def _pyplot(path):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _by_size(results, kind, metric):
    """(sizes, mean, min, max) of `metric` over seeds for one model kind."""
    sizes = sorted({r["train_size"] for r in results if r["model"] == kind})
    values = [[r[metric] for r in results if r["model"] == kind and r["train_size"] == n and metric in r]
              for n in sizes]
    keep = [i for i, v in enumerate(values) if v]
    sizes, values = [sizes[i] for i in keep], [values[i] for i in keep]
    return (np.array(sizes), np.array([np.mean(v) for v in values]), np.array([np.min(v) for v in values]),
            np.array([np.max(v) for v in values]))


def plot_data_efficiency(summary, path=None):
    """Test accuracy against training-set size (log x): one colour per model, a band over seeds.

    A thin dashed line of the same colour is the model's accuracy on its own
    training images: where it is near 1 and the test accuracy far below, the
    model fits what it saw without generalising (overfitting).

    Returns the matplotlib figure; saves it to `path` (PNG) when given.
    """
    plt = _pyplot(path)
    results = summary["results"]
    settings = summary.get("settings", {})
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for kind in [m for m in MODELS if any(r["model"] == m for r in results)]:
        sizes, mean, low, high = _by_size(results, kind, "test_accuracy")
        label = f"{kind} ({settings.get('parameters', {}).get(kind, 0) / 1e3:.0f}k params)"
        (line,) = axes.plot(sizes, mean, marker="o", label=label)
        if np.any(high > low):
            axes.fill_between(sizes, low, high, color=line.get_color(), alpha=0.2)
        train_sizes, train_mean, _, _ = _by_size(results, kind, "train_accuracy")
        if len(train_sizes):
            axes.plot(train_sizes, train_mean, color=line.get_color(), linestyle="--", linewidth=0.9)
    if any("train_accuracy" in r for r in results):
        axes.plot([], [], color="grey", linestyle="--", linewidth=0.9, label="training accuracy (same colour)")
    if settings.get("num_classes"):
        axes.axhline(1.0 / settings["num_classes"], color="grey", linestyle=":", label="chance")
    seeds = len(settings.get("seeds", [])) or len({r.get("seed") for r in results})
    axes.set_xscale("log")
    sizes = sorted({r["train_size"] for r in results})
    axes.set_xticks(sizes, [f"{n:,}" for n in sizes])
    axes.minorticks_off()
    axes.set_xlabel("training images")
    axes.set_ylabel("test accuracy" + (f" (band: min-max over {seeds} seeds)" if seeds > 1 else ""))
    axes.set_ylim(0, 1.02)
    title = f"Data efficiency on {_short_name(settings.get('dataset', '?'))}"
    axes.set_title(title + (", patches shuffled" if settings.get("shuffle_patches") else ""))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    if path is not None:
        _save_figure(figure, path)
    return figure


def shuffled_patches(config=None, log=print, **options):
    """The inductive-bias experiment: every model on the original images and on patch-shuffled ones.

    One fixed random permutation of the P x P patches (P: the ViT preset's patch
    size) is applied to every image, training, validation and test alike, after
    augmentation. For a ViT with learned position embeddings this only renames
    the positions, so it can learn the shuffled task as well as the original; a
    ViT without position embeddings sees exactly the same set of tokens either
    way; a CNN loses the neighbourhoods its 3x3 filters rely on.

    Runs `data_efficiency` twice, into `out/original` and `out/shuffled`
    (each resumable), and plots both side by side in `out/shuffled_patches.png`.

    Args:
        config: a `ShuffledPatchesConfig` (None: the defaults).
        log: function that prints progress.
        **options: `ShuffledPatchesConfig` fields that replace the config's.

    Returns:
        {"original": summary, "shuffled": summary}, each as `data_efficiency` returns.
    """
    config = config_from(ShuffledPatchesConfig, config, options)
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(DataEfficiencyConfig)}
    summaries = {}
    for condition in ("original", "shuffled"):
        log(f"{condition} images:")
        run = DataEfficiencyConfig(**{**fields, "shuffle_patches": condition == "shuffled",
                                      "out": str(Path(config.out) / condition)})
        summaries[condition] = data_efficiency(run, log=log)
    plot_shuffled_patches(summaries, Path(config.out) / "shuffled_patches.png")
    return summaries


def shuffled_table(summaries):
    """Mean test accuracy per model and size on original and shuffled images, as text.

    Example:
    >>> row = lambda m, a: {"results": [{"model": m, "train_size": 60, "test_accuracy": a}]}
    >>> print(shuffled_table({"original": row("cnn", 0.9), "shuffled": row("cnn", 0.6)}))
    model      train size | original | shuffled | change
    cnn                60 |    0.900 |    0.600 | -30.0 pts
    """
    lines = [f"{'model':<10} train size | original | shuffled | change"]
    results = summaries["original"]["results"]
    for kind in [m for m in MODELS if any(r["model"] == m for r in results)]:
        sizes, original, _, _ = _by_size(results, kind, "test_accuracy")
        shuffled_sizes, shuffled, _, _ = _by_size(summaries["shuffled"]["results"], kind, "test_accuracy")
        shuffled = dict(zip(shuffled_sizes.tolist(), shuffled))
        for size, value in zip(sizes.tolist(), original):
            other = shuffled.get(size, math.nan)
            lines.append(f"{kind:<10} {size:>10} | {value:8.3f} | {other:8.3f} | {100 * (other - value):+5.1f} pts")
    return "\n".join(lines)


def plot_shuffled_patches(summaries, path=None):
    """Bars of test accuracy, original vs patch-shuffled images, per model, one panel per training size.

    Error bars span the seeds (min to max). Returns the figure; saves it to `path` when given.
    """
    plt = _pyplot(path)
    results = {condition: summary["results"] for condition, summary in summaries.items()}
    sizes = sorted({r["train_size"] for r in results["original"]})
    kinds = [m for m in MODELS if any(r["model"] == m for r in results["original"])]
    figure, panels = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes) + 0.8, 3.8), sharey=True, squeeze=False)
    for panel, size in zip(panels[0], sizes):
        for offset, (condition, colour) in zip((-0.2, 0.2), (("original", "tab:blue"), ("shuffled", "tab:orange"))):
            values = [[r["test_accuracy"] for r in results[condition] if r["model"] == k and r["train_size"] == size]
                      or [math.nan] for k in kinds]
            mean = np.array([np.mean(v) for v in values])
            spread = np.array([[m - np.min(v) for v, m in zip(values, mean)], [np.max(v) - m for v, m in zip(values, mean)]])
            panel.bar(np.arange(len(kinds)) + offset, mean, 0.4, yerr=spread, capsize=3, color=colour,
                      label=f"{condition} images")
        panel.set_xticks(np.arange(len(kinds)), kinds)
        panel.set_title(f"{size:,} training images")
        panel.set_ylim(0, 1.02)
        panel.grid(True, axis="y", alpha=0.3)
    settings = summaries["original"].get("settings", {})
    if settings.get("num_classes"):
        for panel in panels[0]:
            panel.axhline(1.0 / settings["num_classes"], color="grey", linestyle=":")
    panels[0][0].set_ylabel("test accuracy")
    panels[0][0].legend(fontsize=8, loc="lower left")
    figure.suptitle(f"Shuffled patches on {_short_name(settings.get('dataset', '?'))}: one fixed permutation")
    figure.tight_layout()
    if path is not None:
        _save_figure(figure, path)
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
    _check_choice("model", config.model, SCRATCH_MODELS)
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
