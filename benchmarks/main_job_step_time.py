"""Where the main job's time goes: one training step of its ViT and CNN, by batch size, XLA and threads.

The main job (`python -m vitkeras data-efficiency`) spends nearly all its wall time in training
steps of two small models (ViT Pico/4 and the matched CNN, 16x16 images). This script times
`train_on_batch` of each, compiled exactly as the main job compiles them (the `scratch` recipe at
a constant rate), for several batch sizes, with and without XLA (`jit_compile`), on the
backend's default threads or on one thread. `--pair` runs the ViT and the CNN side by side in two
processes of one thread each, as a main job that trained the two models at once would. `--fit`
times steps inside `model.fit` on the main job's input pipeline instead (batch 256, 1,800 shapes
images, with the recipe's flip-and-translate augmentation and without), the ViT with XLA as
`--jit-compile vit` compiles it.

Usage (TensorFlow, the main job's backend; a few minutes on 2 cores):

    python benchmarks/main_job_step_time.py --out benchmarks/results/main_job_step_time.json
    python benchmarks/main_job_step_time.py --pair --out benchmarks/results/main_job_step_time_pair.json
    python benchmarks/main_job_step_time.py --fit --out benchmarks/results/main_job_step_time_fit.json
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy_at_budget import _positive  # noqa: E402


def main_job_model(kind, jit):
    """The main job's ViT or CNN (16x16 images, 6 classes), compiled as the main job compiles it."""
    from vitkeras import experiments, training

    config = experiments.DataEfficiencyConfig()
    width, _ = experiments._efficiency_models(config, 16, 6)
    model = experiments.build_model(kind, 16, 6, config.preset, width, seed=0, cnn_stem_stride=config.cnn_stem_stride)
    recipe = experiments.scratch_recipe(config.recipe).replace(schedule="constant", warmup_fraction=0.0)
    training.compile_model(model, recipe, total_steps=1000, jit_compile=jit)
    return model


def step_ms(kind, batch, jit, rounds=5, steps=15):
    """Median over `rounds` of the mean milliseconds of `steps` training steps on one fixed batch."""
    import keras

    model = main_job_model(kind, jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 16, 16, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 6, batch), 6)
    for _ in range(3):  # trace and warm up
        model.train_on_batch(x, y)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        times.append((time.perf_counter() - start) / steps * 1000)
    return round(float(np.median(times)), 1)


def fit_step_ms(kind, jit, augmentation, steps=300, batch=256):
    """Mean milliseconds of a training step inside `fit`, on the main job's input pipeline."""
    from vitkeras import data

    model = main_job_model(kind, jit)
    pool = data.make_shapes(1800, image_size=16, seed=0)
    batches = data.make_pipeline(pool, batch, training=True, augmentation=augmentation, repeat=True)
    model.fit(batches, epochs=1, steps_per_epoch=20, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(batches, epochs=steps // 50, steps_per_epoch=50, verbose=0)  # the main job's 50-step epochs
    return round((time.perf_counter() - start) / (steps // 50 * 50) * 1000, 1)


def set_threads(threads):
    if threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=_positive(int), nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--threads", type=_positive(int), default=None, help="TensorFlow threads (default: its own)")
    parser.add_argument("--pair", action="store_true", help="ViT (XLA) and CNN side by side, one thread each")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "BATCH", "JIT"), help=argparse.SUPPRESS)
    parser.add_argument("--fit", action="store_true", help="steps inside fit on the main job's pipeline")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.one:  # a child of --pair
        kind, batch, jit = args.one
        print(json.dumps({"kind": kind, "batch": int(batch), "jit": jit == "1", "threads": args.threads or 0,
                          "ms": step_ms(kind, int(batch), jit == "1")}))
        return
    from vitkeras.experiments import machine_description

    rows = []
    if args.fit:
        from vitkeras import training

        for kind, jit in (("vit", True), ("cnn", "auto")):
            for augmentation in (training.get_recipe("scratch").augmentation, "none"):
                rows.append({"kind": kind, "batch": 256, "jit": jit is True, "augmentation": augmentation,
                             "threads": args.threads or 0, "fit_ms": fit_step_ms(kind, jit, augmentation)})
                print(rows[-1], flush=True)
    elif args.pair:
        for threads, mode in ((None, "alone"), (1, "alone"), (1, "side by side")):
            command = [sys.executable, __file__, *(["--threads", str(threads)] if threads else []), "--one"]
            children = [command + [kind, "256", jit] for kind, jit in (("vit", "1"), ("cnn", "0"))]
            if mode == "alone":
                outputs = [subprocess.run(child, capture_output=True, text=True) for child in children]
            else:
                procs = [subprocess.Popen(child, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                         for child in children]
                streams = [p.communicate() for p in procs]  # read before the exit code: a full pipe would block
                outputs = [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(procs, streams)]
            for output in outputs:
                if output.returncode:
                    sys.exit(f"{' '.join(output.args[-3:])} failed:\n{output.stderr[-2000:]}")
                rows.append({**json.loads(output.stdout.strip().splitlines()[-1]), "mode": mode})
                print(rows[-1], flush=True)
    else:
        for kind in ("vit", "cnn"):
            for jit in (False, True):
                for batch in args.batches:
                    rows.append({"kind": kind, "batch": batch, "jit": jit, "threads": args.threads or 0,
                                 "ms": step_ms(kind, batch, jit)})
                    print(rows[-1], flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"machine": machine_description(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
