"""The course's experiments as functions that return results and write JSON and plots.

`data_efficiency` is the central one: a ViT and a CNN of similar size, trained
with the same recipe for the same epochs on growing training subsets,
evaluated on one fixed test set (paper section 4.3, Figures 3 and 4).
Results are written after every finished point, atomically, so an interrupted
run keeps what it finished and a rerun with the same settings skips it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from vitkeras import data as vdata
from vitkeras import models, pretrained, training

__all__ = [
    "MODELS",
    "DEFAULT_SIZES",
    "build_model",
    "matched_cnn_width",
    "train_and_evaluate",
    "data_efficiency",
    "plot_data_efficiency",
    "summary_table",
    "train",
    "finetune",
    "machine_description",
]

MODELS = ("vit", "cnn", "hybrid")
# The default data-efficiency run (embedded dataset, 6 classes, 16x16 images): examples
# per class, epochs, and the fewest optimizer steps of a run (so that small subsets are
# trained to convergence, not stopped after a handful of steps). Measured to finish in
# under 5 minutes on 2 CPU cores; see benchmarks/RESULTS.md.
DEFAULT_SIZES = (100, 300, 1000, 3000)
DEFAULT_EPOCHS = 8
DEFAULT_MIN_STEPS = 400


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


def build_model(kind, image_size, num_classes, vit_preset="Nano/4", cnn_width=None, seed=0, **vit_overrides):
    """One of the compared models: "vit", "cnn" (width matched to the ViT unless given) or "hybrid"."""
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
    raise ValueError(f"Unknown model kind {kind!r}; allowed: {list(MODELS)}.")


def train_and_evaluate(
    model, train_data, test_data, recipe, epochs, min_steps=0, seed=0, out_dir=None, verbose=0, batch_size=None
):
    """Trains `model` on ArrayData with a recipe and returns (test accuracy, epochs run, seconds, history).

    Every epoch is one pass over `train_data`; with `min_steps`, small training
    sets get more epochs so that every run takes at least that many steps.
    """
    recipe = training.get_recipe(recipe)
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
    accuracy = float(model.evaluate(test_batches, verbose=0, return_dict=True)["accuracy"])
    return accuracy, epochs, seconds, history


class _Precision:
    """Sets the global dtype policy for an experiment ("auto": the one the device should use) and restores it."""

    def __init__(self, precision):
        allowed = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
        if precision not in allowed:
            raise ValueError(f"precision must be one of {list(allowed)}, got {precision!r}.")
        self.policy = training.choose_precision() if precision == "auto" else precision

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.policy)
        return self.policy

    def __exit__(self, *exc):
        keras.config.set_dtype_policy(self.previous)
        return False


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


def data_efficiency(
    dataset="shapes",
    sizes=DEFAULT_SIZES,
    epochs=DEFAULT_EPOCHS,
    seeds=(0,),
    model_kinds=("vit", "cnn"),
    vit_preset="Nano/4",
    cnn_width=None,
    recipe="scratch",
    min_steps=DEFAULT_MIN_STEPS,
    batch_size=64,
    image_size=None,
    data_dir=None,
    out="runs/data_efficiency",
    verbose=0,
    log=print,
    precision="auto",
):
    """ViT vs CNN test accuracy as the training set grows.

    Args:
        dataset: a name accepted by `vitkeras.data.load_arrays` ("shapes", "cifar10", "folder:PATH", ...).
        sizes: training examples per class, one run per size (stratified, seeded subsets).
        epochs: passes over the training subset (the same for every model).
        seeds: one run per seed for every size and model (subset, init and augmentation).
        model_kinds: any of "vit", "cnn", "hybrid".
        vit_preset: ViT preset; the CNN's width is matched to its parameter count unless `cnn_width`.
        recipe: training recipe name (see `vitkeras.training.RECIPES`) or a `Recipe`,
            e.g. `training.get_recipe("scratch", augmentation="strong")`.
        min_steps: at least this many optimizer steps per run (small subsets get more epochs,
            the same for every model).
        batch_size: training batch size (None: the recipe's).
        image_size: resize images (None: the dataset's own size; 32 for shapes).
        data_dir: tensorflow-datasets folder for local copies.
        out: output folder: results.json and data_efficiency.png.
        verbose: Keras verbosity while training.
        log: function that prints progress.
        precision: "auto" (float32 on CPU, mixed precision on GPUs/TPUs, see
            `vitkeras.training.choose_precision`) or a Keras dtype policy name.

    Returns:
        {"settings": {...}, "results": [{"model", "train_size", "seed", "test_accuracy", "epochs", "seconds", ...}]}
    """
    with _Precision(precision) as policy:
        return _data_efficiency(
            dataset, sizes, epochs, seeds, model_kinds, vit_preset, cnn_width, recipe, min_steps, batch_size,
            image_size, data_dir, Path(out), verbose, log, policy,
        )


def _data_efficiency(
    dataset, sizes, epochs, seeds, model_kinds, vit_preset, cnn_width, recipe, min_steps, batch_size,
    image_size, data_dir, out, verbose, log, policy,
):
    sizes = sorted(int(s) for s in sizes)
    bad = [k for k in model_kinds if k not in MODELS]
    if bad:
        raise ValueError(f"Unknown model kind(s) {bad}; allowed: {list(MODELS)}.")
    train_all = vdata.load_arrays(dataset, "train", image_size=image_size, data_dir=data_dir)
    test = vdata.load_arrays(dataset, "test", image_size=image_size, data_dir=data_dir)
    num_classes, size_px = train_all.num_classes, train_all.images.shape[1]
    largest = int(np.bincount(train_all.labels).min())
    if sizes[-1] > largest:
        raise ValueError(f"--sizes goes up to {sizes[-1]} per class, but {dataset!r} has only {largest} per class.")
    width = cnn_width  # the CNN's width, matched to the ViT once (not for every run) unless given
    if "cnn" in model_kinds and width is None:
        target = models.build_vit(vit_preset, image_size=size_px, num_classes=num_classes).count_params()
        width = matched_cnn_width(target, size_px, num_classes)
    params = {kind: build_model(kind, size_px, num_classes, vit_preset, width).count_params() for kind in model_kinds}
    recipe_obj = training.get_recipe(recipe)
    key = dict(
        dataset=dataset, sizes=sizes, epochs=epochs, models=list(model_kinds), vit_preset=vit_preset,
        cnn_width=cnn_width,
        # A named recipe by name (keeps existing results files valid); a modified one by all its fields.
        recipe=recipe_obj.name if recipe_obj == training.RECIPES.get(recipe_obj.name) else dataclasses.asdict(recipe_obj),
        min_steps=min_steps, batch_size=batch_size, image_size=size_px,
    )
    settings = {
        "key": json.dumps(key, sort_keys=True),
        **key,
        "seeds": list(seeds),
        "parameters": params,
        "cnn_width_used": width,
        "recipe_details": dataclasses.asdict(recipe_obj),
        "train_pool": len(train_all),
        "test_size": len(test),
        "num_classes": num_classes,
        "precision": policy,
        "machine": machine_description(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    results = _load_results(out / "results.json", settings)
    done = {(r["model"], r["train_size"], r["seed"]) for r in results}
    log(f"data-efficiency on {dataset}: {num_classes} classes, test set {len(test)}, parameters {params}")
    for seed in seeds:
        for per_class in sizes:
            subset = train_all.take(vdata.stratified_subset(train_all.labels, per_class, seed=seed))
            for kind in model_kinds:
                if (kind, len(subset), seed) in done:
                    continue
                keras.backend.clear_session()
                model = build_model(kind, size_px, num_classes, vit_preset, width, seed=seed)
                accuracy, run_epochs, seconds, _ = train_and_evaluate(
                    model, subset, test, recipe_obj, epochs, min_steps=min_steps, seed=seed, verbose=verbose,
                    batch_size=batch_size,
                )
                results.append(
                    {
                        "model": kind,
                        "train_size": len(subset),
                        "seed": seed,
                        "test_accuracy": accuracy,
                        "epochs": run_epochs,
                        "seconds": round(seconds, 2),
                        "parameters": params[kind],
                    }
                )
                training.write_json_atomic(out / "results.json", {"settings": settings, "results": results})
                log(f"  {kind:<6} n={len(subset):>6} seed={seed}: test accuracy {accuracy:.3f} "
                    f"({run_epochs} epochs, {seconds:.0f} s)")
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
    lines = ["train size | " + " | ".join(f"{k:>6}" for k in kinds) + (" | cnn - vit" if both else "")]
    for size in sorted({r["train_size"] for r in results}):
        means = {}
        for kind in kinds:
            values = [r["test_accuracy"] for r in results if r["model"] == kind and r["train_size"] == size]
            means[kind] = sum(values) / len(values) if values else float("nan")
        row = f"{size:>10} | " + " | ".join(f"{means[k]:6.3f}" for k in kinds)
        if both:
            row += f" | {100 * (means['cnn'] - means['vit']):+6.1f} pts"
        lines.append(row)
    return "\n".join(lines)


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
    axes.set_title(f"Data efficiency on {settings.get('dataset', '?')} ({settings.get('epochs', '?')} epochs)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(path).with_name(f".{Path(path).name}.tmp.png")
        figure.savefig(temporary, dpi=120)
        os.replace(temporary, path)
    return figure


def train(
    model_kind="vit",
    dataset="shapes",
    vit_preset="Nano/4",
    epochs=10,
    recipe="scratch",
    image_size=None,
    data_dir=None,
    out="runs/train",
    seed=0,
    verbose="auto",
    log=print,
    precision="auto",
    cnn_width=None,
    **vit_overrides,
):
    """Trains one model on a dataset's train split and reports test accuracy.

    Writes `out/history.json` (resumable: rerun after an interruption to continue)
    and `out/result.json`. `precision` as in `data_efficiency`; `cnn_width` as in
    `build_model` (None: matched to the ViT preset's parameter count).
    """
    with _Precision(precision) as policy:
        return _train(model_kind, dataset, vit_preset, epochs, recipe, image_size, data_dir, Path(out), seed,
                      verbose, log, policy, cnn_width, vit_overrides)


def _train(model_kind, dataset, vit_preset, epochs, recipe, image_size, data_dir, out, seed, verbose, log, policy,
           cnn_width, vit_overrides):
    train_data = vdata.load_arrays(dataset, "train", image_size=image_size, data_dir=data_dir)
    test = vdata.load_arrays(dataset, "test", image_size=image_size, data_dir=data_dir)
    model = build_model(model_kind, train_data.images.shape[1], train_data.num_classes, vit_preset, cnn_width=cnn_width,
                        seed=seed, **vit_overrides)
    log(f"training {model.name} ({model.count_params():,} parameters) on {dataset}: {len(train_data)} images")
    accuracy, run_epochs, seconds, history = train_and_evaluate(
        model, train_data, test, recipe, epochs, seed=seed, out_dir=out, verbose=verbose
    )
    result = {
        "model": model_kind,
        "preset": vit_preset if model_kind != "cnn" else None,
        "dataset": dataset,
        "train_size": len(train_data),
        "test_size": len(test),
        "test_accuracy": accuracy,
        "epochs": run_epochs,
        "seconds": round(seconds, 2),
        "parameters": model.count_params(),
        "recipe": training.get_recipe(recipe).name,
        "precision": policy,
        "machine": machine_description(),
        "history": history,
    }
    training.write_json_atomic(out / "result.json", result)
    log(f"test accuracy {accuracy:.4f} after {run_epochs} epochs ({seconds:.0f} s); wrote {out / 'result.json'}")
    return result


def finetune(
    checkpoint,
    dataset="cats_vs_dogs",
    image_size=None,
    linear_probe=False,
    epochs=1,
    batch_size=None,
    learning_rate=None,
    train_size=None,
    test_size=None,
    data_dir=None,
    cache_dir=None,
    out="runs/finetune",
    seed=0,
    verbose="auto",
    log=print,
    precision="auto",
):
    """Fine-tunes a pretrained checkpoint on a dataset and reports test accuracy (paper section 3.2).

    The checkpoint's head is replaced by a zero-initialised K-class head; with
    `linear_probe` only that head trains. Images stream from `vitkeras.data.load`,
    resized to the checkpoint's resolution (or `image_size`), and are fed in
    [0, 255]: the model applies the checkpoint's own normalisation. Writes
    `out/history.json` (resumable), `out/result.json` and the fine-tuned model
    `out/model.keras` (reloads with `keras.saving.load_model` after `import vitkeras`).

    Args:
        checkpoint: local checkpoint directory or Hub id (see `vitkeras.load_pretrained`).
        dataset: "cats_vs_dogs", "cifar10", "cifar100", "folder:PATH", ... (see `vitkeras.data.load`).
        image_size: fine-tuning resolution; None uses the checkpoint's.
        linear_probe: train the head only.
        epochs: passes over the training split.
        batch_size, learning_rate: override the "finetune" recipe (SGD, momentum 0.9, batch 64, lr 0.01).
        train_size, test_size: use only the first examples of each split (quick runs).
        data_dir, cache_dir: tensorflow-datasets and Hugging Face download folders.
        out, seed, verbose, log, precision: as in `train`.

    Returns:
        The result dict written to `out/result.json`.
    """
    with _Precision(precision) as policy:
        directory = pretrained.resolve_checkpoint(checkpoint, cache_dir)
        info = pretrained.read_pretrained_info(directory)
        size = int(image_size or info.image_size[0])
        splits = {}
        for split, limit in (("train", train_size), ("test", test_size)):
            stream, split_info = vdata.load(dataset, split, image_size=size, data_dir=data_dir)
            count = split_info.num_examples if limit is None else min(int(limit), split_info.num_examples)
            splits[split] = (stream.take(count), count, split_info)
        (train_stream, train_count, train_info), (test_stream, test_count, _) = splits["train"], splits["test"]
        recipe = training.get_recipe("finetune", batch_size=batch_size, learning_rate=learning_rate)
        batch = min(recipe.batch_size, train_count)
        steps_per_epoch = max(1, train_count // batch)
        model = pretrained.load_pretrained(
            directory, image_size=size, num_classes=train_info.num_classes, linear_probe=linear_probe, seed=seed
        )
        trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        log(f"fine-tuning {info.model_type} from {checkpoint} ({model.count_params():,} parameters, {trainable:,} trainable) "
            f"on {dataset} at {size}x{size}: {train_count} training images, {steps_per_epoch} steps per epoch")
        train_batches = vdata.make_pipeline(
            train_stream, batch, train_info.num_classes, training=True, augmentation=recipe.augmentation,
            rescale=1.0, seed=seed, repeat=True,
        )
        test_batches = vdata.make_pipeline(test_stream, batch, train_info.num_classes, rescale=1.0)
        training.compile_model(model, recipe, total_steps=epochs * steps_per_epoch)
        start = time.perf_counter()
        history = training.fit(model, train_batches, epochs, steps_per_epoch, out_dir=Path(out), verbose=verbose)
        seconds = time.perf_counter() - start
        accuracy = float(model.evaluate(test_batches, verbose=0, return_dict=True)["accuracy"])
        model.save(Path(out) / "model.keras")
    result = {
        "checkpoint": str(checkpoint),
        "model_type": info.model_type,
        "dataset": dataset,
        "image_size": size,
        "linear_probe": bool(linear_probe),
        "train_size": train_count,
        "test_size": test_count,
        "test_accuracy": accuracy,
        "epochs": int(epochs),
        "seconds": round(seconds, 2),
        "seconds_per_epoch": round(seconds / max(int(epochs), 1), 2),
        "parameters": model.count_params(),
        "trainable_parameters": trainable,
        "recipe": dataclasses.asdict(recipe),
        "precision": policy,
        "machine": machine_description(),
        "history": history,
    }
    training.write_json_atomic(Path(out) / "result.json", result)
    log(f"test accuracy {accuracy:.4f} after {epochs} epoch(s) ({seconds:.0f} s); wrote {Path(out) / 'result.json'}")
    return result
