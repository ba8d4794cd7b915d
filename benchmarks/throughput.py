"""Training and inference throughput of vitkeras against other Keras ViTs, with FLOP utilization.

Implementations, all at the same configuration (P, D, L, h, MLP, K) on the same backend:

- "vitkeras": `vitkeras.build_vit`;
- "keras_example_layout": the keras.io example's layer layout (`keras.ops.image.extract_patches`,
  Dense + position `Embedding`, `keras.layers.MultiHeadAttention` blocks, Flatten -> Dense head),
  with heads of D/h like the paper (the example itself uses D per head);
- "keras_hub": `keras_hub.models.ViTBackbone` with a Dense head on the class token (when
  keras-hub is installed: `pip install -r benchmarks/requirements.txt`).

The implementations are timed in turns (round 1: a, b, c; round 2: a, b, c; ...) after a warm-up,
so that a slower or busier moment of a shared machine hits all of them; the report gives the
median over rounds, the spread, and ratios to vitkeras. Model FLOP utilization (MFU) is the
analytic training FLOPs per image (3 x the forward pass) times images per second, divided by the
machine's float32 matmul peak measured in the same run. Peak memory is measured per
implementation in a fresh subprocess (CPU: the process's maximum resident set; GPU: the
backend's peak device memory).

Usage (one backend per process; the README's numbers ran all three):

    KERAS_BACKEND=jax python benchmarks/throughput.py --configs cifar S/16 --out benchmarks/results/throughput_jax.json
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkeras  # noqa: E402
from vitkeras.experiments import machine_description  # noqa: E402
from vitkeras.keras_example import build_keras_example_vit  # noqa: E402

# name: (preset, image size, classes, CPU batch, GPU batch)
CONFIGS = {
    "cifar": ("Micro/4", 32, 10, 128, 512),
    "Ti/16": ("Ti/16", 224, 1000, 32, 256),
    "S/16": ("S/16", 224, 1000, 16, 256),
    "B/16": ("B/16", 224, 1000, 8, 128),
}
IMPLEMENTATIONS = ("vitkeras", "keras_example_layout", "keras_hub")


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #
def keras_hub_available():
    try:
        import keras_hub  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or not importable beside these pins
        return False
    return True


def build(implementation, config_name):
    preset, size, classes, _, _ = CONFIGS[config_name]
    c = vitkeras.get_config(preset)
    if implementation == "vitkeras":
        return vitkeras.build_vit(c, image_size=size, num_classes=classes, seed=0)
    if implementation == "keras_example_layout":
        return build_keras_example_vit(
            input_size=size, num_classes=classes, image_size=size, patch_size=c.patch_size, projection_dim=c.hidden_dim,
            num_heads=c.num_heads, transformer_layers=c.num_layers, head_units=[], augment=False,
            key_dim=c.hidden_dim // c.num_heads, mlp_dim=c.mlp_dim,
        )
    if implementation == "keras_hub":
        import keras_hub

        backbone = keras_hub.models.ViTBackbone(
            image_shape=(size, size, 3), patch_size=c.patch_size, num_layers=c.num_layers, num_heads=c.num_heads,
            hidden_dim=c.hidden_dim, mlp_dim=c.mlp_dim,
        )
        images = keras.Input((size, size, 3))
        tokens = backbone(images)  # (B, 1+N, D)
        outputs = keras.layers.Dense(classes)(tokens[:, 0])  # (B, K)
        return keras.Model(images, outputs, name="keras_hub_vit")
    raise ValueError(f"unknown implementation {implementation!r}; known: {IMPLEMENTATIONS}")


def forward_flops(config_name, tokens=None):
    """Analytic forward FLOPs per image (a multiply-add = 2 FLOPs), matmuls and attention only."""
    preset, size, classes, _, _ = CONFIGS[config_name]
    c = vitkeras.get_config(preset)
    n = (size // c.patch_size) ** 2
    t = tokens or n + 1
    d, m = c.hidden_dim, c.mlp_dim
    embed = 2 * n * (c.patch_size**2 * 3) * d
    per_block = 2 * t * d * 4 * d + 2 * 2 * t * t * d + 2 * 2 * t * d * m  # projections, QK^T and AV, MLP
    return embed + c.num_layers * per_block + 2 * d * classes


def tokens_of(implementation, config_name):
    preset, size, _, _, _ = CONFIGS[config_name]
    n = (size // vitkeras.get_config(preset).patch_size) ** 2
    return n if implementation == "keras_example_layout" else n + 1  # the example has no class token


# --------------------------------------------------------------------------- #
# Measurements
# --------------------------------------------------------------------------- #
def on_gpu():
    return vitkeras.training.accelerator()[0] not in ("cpu", None)


def matmul_peak(n=2048, repeats=5):
    """Measured float32 matmul FLOP/s of this backend on this machine (best of `repeats`)."""
    a = keras.ops.convert_to_tensor(np.random.default_rng(0).normal(size=(n, n)).astype("float32"))
    b = keras.ops.convert_to_tensor(np.random.default_rng(1).normal(size=(n, n)).astype("float32"))
    keras.ops.convert_to_numpy(keras.ops.matmul(a, b)[0, 0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        c = keras.ops.matmul(a, b)
        keras.ops.convert_to_numpy(c[0, 0])  # wait for the result
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Runner:
    """One compiled model with its batch, timed in training or inference steps."""

    def __init__(self, implementation, config_name, batch):
        keras.utils.set_random_seed(0)
        self.model = build(implementation, config_name)
        _, size, classes, _, _ = CONFIGS[config_name]
        rng = np.random.default_rng(0)
        self.x = rng.uniform(0, 1, (batch, size, size, 3)).astype("float32")
        self.y = keras.utils.to_categorical(rng.integers(0, classes, batch), classes).astype("float32")
        self.model.compile(
            optimizer=keras.optimizers.AdamW(1e-3),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            jit_compile="auto",
        )
        self.batch = batch

    def train_steps(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            loss = self.model.train_on_batch(self.x, self.y)
        float(np.asarray(loss))  # wait for the last step
        return steps * self.batch / (time.perf_counter() - start)

    def infer_steps(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            out = self.model.predict_on_batch(self.x)
        np.asarray(out)[0, 0]
        return steps * self.batch / (time.perf_counter() - start)


def peak_memory_of(implementation, config_name, batch):
    """Peak memory (bytes) of a few training steps, measured in a fresh subprocess."""
    command = [sys.executable, __file__, "--memory-probe", implementation, config_name, str(batch)]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ), timeout=900)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PEAK_BYTES ")]
    return int(lines[-1].split()[1]) if lines else None


def _memory_probe(implementation, config_name, batch):
    runner = Runner(implementation, config_name, int(batch))
    runner.train_steps(2)
    peak = None
    if on_gpu() and keras.backend.backend() == "jax":
        import jax

        peak = jax.devices()[0].memory_stats().get("peak_bytes_in_use")
    elif on_gpu() and keras.backend.backend() == "torch":
        import torch

        peak = torch.cuda.max_memory_allocated()
    if peak is None:
        peak = _peak_rss()
    print(f"PEAK_BYTES {peak}")


def _peak_rss():
    """This process's peak resident memory in bytes.

    VmHWM (Linux) starts afresh at exec; `ru_maxrss` would not: Linux carries it over
    from the forking parent, which made every probe report the parent's size.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def benchmark(config_names, implementations, rounds, train_steps, infer_steps, memory=True, log=print):
    peak = matmul_peak()
    log(f"backend {keras.backend.backend()}, matmul peak {peak / 1e9:.1f} GFLOP/s (float32)")
    results = []
    for config_name in config_names:
        batch = CONFIGS[config_name][4 if on_gpu() else 3]
        runners = {}
        for implementation in implementations:
            keras.backend.clear_session(free_memory=False)
            try:
                runners[implementation] = Runner(implementation, config_name, batch)
                runners[implementation].train_steps(2)  # compile and warm up
                runners[implementation].infer_steps(2)
            except Exception as error:  # noqa: BLE001 - recorded, the others still run
                log(f"  {implementation} {config_name}: failed: {type(error).__name__}: {error}")
                results.append({"config": config_name, "implementation": implementation, "error": f"{type(error).__name__}: {error}"})
        samples = {name: {"train": [], "infer": []} for name in runners}
        for _ in range(rounds):
            for name, runner in runners.items():
                samples[name]["train"].append(runner.train_steps(train_steps))
                samples[name]["infer"].append(runner.infer_steps(infer_steps))
        for name, runner in runners.items():
            train, infer = samples[name]["train"], samples[name]["infer"]
            flops = 3 * forward_flops(config_name, tokens_of(name, config_name))
            record = {
                "config": config_name,
                "implementation": name,
                "batch": batch,
                "parameters": runner.model.count_params(),
                "train_images_per_s": statistics.median(train),
                "train_spread": [min(train), max(train)],
                "infer_images_per_s": statistics.median(infer),
                "infer_spread": [min(infer), max(infer)],
                "train_gflop_per_image": flops / 1e9,
                "train_mfu": statistics.median(train) * flops / peak,
            }
            if memory:
                record["peak_memory_bytes"] = peak_memory_of(name, config_name, batch)
            results.append(record)
            log(f"  {config_name:<6} {name:<22} train {record['train_images_per_s']:8.1f} img/s "
                f"infer {record['infer_images_per_s']:8.1f} img/s  MFU {100 * record['train_mfu']:5.1f}%")
        del runners
    for record in results:
        base = next((r for r in results if r["config"] == record["config"] and r["implementation"] == "vitkeras"), None)
        if base and "train_images_per_s" in record:
            record["train_ratio_vitkeras_over_this"] = base["train_images_per_s"] / record["train_images_per_s"]
            record["infer_ratio_vitkeras_over_this"] = base["infer_images_per_s"] / record["infer_images_per_s"]
    return {"matmul_peak_flops": peak, "results": results}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-probe":
        return _memory_probe(*argv[1:4])
    if argv and argv[0] == "--memory-only":  # re-measure the memory of an existing results file
        path = Path(argv[1])
        report = json.loads(path.read_text())
        for record in report["results"]:
            if "train_images_per_s" in record:
                record["peak_memory_bytes"] = peak_memory_of(record["implementation"], record["config"], record["batch"])
                print(record["config"], record["implementation"], round(record["peak_memory_bytes"] / 2**20), "MiB")
        path.write_text(json.dumps(report, indent=2))
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["cifar", "S/16"], choices=list(CONFIGS))
    parser.add_argument("--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds per implementation (default 5)")
    parser.add_argument("--train-steps", type=int, default=3, help="training steps per round (default 3)")
    parser.add_argument("--infer-steps", type=int, default=3, help="inference steps per round (default 3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    implementations = [i for i in args.implementations if i != "keras_hub" or keras_hub_available()]
    skipped = sorted(set(args.implementations) - set(implementations))
    if skipped:
        print(f"skipping {skipped}: keras-hub is not installed (pip install -r benchmarks/requirements.txt)")
    report = benchmark(args.configs, implementations, args.rounds, args.train_steps, args.infer_steps,
                       memory=not args.no_memory)
    import importlib.metadata as metadata

    versions = {}
    for package in ("keras", "tensorflow", "jax", "torch", "keras-hub", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    report.update(
        command="KERAS_BACKEND=" + keras.backend.backend() + " python " + " ".join([sys.argv[0], *argv]),
        backend=keras.backend.backend(),
        machine=machine_description(),
        versions=versions,
        skipped=skipped,
        date=time.strftime("%Y-%m-%d"),
        rounds=args.rounds,
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
