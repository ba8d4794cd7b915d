"""Where a ViT training step's time goes on JAX: vitkeras against keras-hub, piece by piece.

For one configuration (default B/16 at 224 px), both implementations' forward +
backward pass (the gradient of a cross-entropy loss with respect to every
trainable weight, as `fit` computes it; the optimizer update is left out, it is
the same for both: same parameter count) is compiled with `jax.jit` and timed,
then the same for their pieces, each with the gradient with respect to its
weights and its input (as backpropagation through the model needs):

- embedding: image -> tokens with position embeddings (vitkeras `Patches` +
  `PatchEncoder`; keras-hub `ViTPatchingAndEmbedding`, a strided Conv2D);
- one encoder block (vitkeras `TransformerBlock`; keras-hub `ViTEncoderBlock`);
- inside a block: attention alone (the fused `ops.dot_product_attention`, and the
  explicit einsum-softmax-einsum), LayerNorm, GELU exact and tanh, the MLP.

It also counts the ops of each compiled full step (XLA's optimized HLO, by op
name) and the dtypes they produce. With `--trace DIR` it records a
`jax.profiler` trace of both full steps and reads it back
(`jax.profiler.ProfileData`, no viewer needed): the time of every compiled op
(XLA fusion, dot, copy) summed over the runtime's threads, grouped by kind and
output shape, with the Keras layer it came from (the HLO's `op_name`), so the
report names the ops a step spends its time in, in ms per step.
Pieces are timed in turns, median of `--rounds`, in milliseconds per step.

    KERAS_BACKEND=jax python benchmarks/profile_train_step.py --config S/16 --batch 4 --trace /tmp/trace_s16 \\
        --out benchmarks/results/profile_s16_jax_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vitkeras  # noqa: E402
from vitkeras.experiments import machine_description  # noqa: E402
from vitkeras.layers import Patches  # noqa: E402

CONFIGS = {"B/16": ("B/16", 224, 1000), "S/16": ("S/16", 224, 1000), "Ti/16": ("Ti/16", 224, 1000),
           "cifar": ("Micro/4", 32, 10)}


def gradient_step(layer, x, y=None, wrt_input=None):
    """A jitted function of the layer's trainable weights and `x` giving (loss, gradients), and its arguments.

    Loss: cross-entropy against `y` for a model, else the mean square of the output
    (any scalar does: the backward pass costs the same). Gradients with respect to
    the weights and (unless `wrt_input` is False, or a model is given labels) the input:
    a training step needs no gradient for the images, every block needs one for its tokens.
    """
    import inspect

    import jax

    if not layer.built:
        layer(x)
    kwargs = {"training": True} if "training" in inspect.signature(layer.call).parameters else {}
    trainable = [v.value for v in layer.trainable_variables]
    frozen = [v.value for v in layer.non_trainable_variables]
    wrt_input = y is None if wrt_input is None else wrt_input

    def loss(trainable, x):
        out, _ = layer.stateless_call(trainable, frozen, x, **kwargs)
        out = out.astype("float32")
        if y is None:
            return (out * out).mean()
        return keras.ops.mean(keras.losses.categorical_crossentropy(y, out, from_logits=True))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1) if wrt_input else 0))
    return step, (trainable, x)


def time_steps(functions, rounds, repeats):
    """{name: median ms per call}: each function compiled, then called `repeats` times per round, in turns."""
    import jax

    for fn, args in functions.values():
        jax.block_until_ready(fn(*args))  # compile and warm up
    samples = collections.defaultdict(list)
    for _ in range(rounds):
        for name, (fn, args) in functions.items():
            start = time.perf_counter()
            for _ in range(repeats):
                out = fn(*args)
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / repeats * 1000)
    return {name: {"ms": round(statistics.median(v), 2), "min": round(min(v), 2), "max": round(max(v), 2)}
            for name, v in samples.items()}


def hlo_summary(fn, args):
    """Counts of the compiled program's ops by name and of the dtypes they produce (XLA's optimized HLO)."""
    text = fn.lower(*args).compile().as_text()
    ops, dtypes = collections.Counter(), collections.Counter()
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[[^\]]*\][^ ]* (\w[\w-]*)\(", line)
        if match:
            dtypes[match.group(1)] += 1
            ops[match.group(2)] += 1
    return {"ops": dict(ops.most_common()), "dtypes": dict(dtypes.most_common()),
            "converts": ops.get("convert", 0), "transposes": ops.get("transpose", 0)}


def _layer_of(location):
    """The Keras layer a traced op came from, blocks merged: "jit(loss)/transpose(jvp(encoder_block_3))/norm1/mul"
    -> ("backward", "block/norm1")."""
    direction = "backward" if "transpose(" in location else "forward"
    path = re.sub(r"\b(?:jit|jvp|transpose|pjit|checkpoint)\(", "", location).replace(")", "")
    parts = [part for part in path.split("/")[1:-1] if part]  # drop the function's name and the op
    parts = [re.sub(r"^(encoder_block|transformer_layer|transformer_block)_\d+$", "block", part) for part in parts]
    return direction, "/".join(parts[-2:]) or "(model)"


def convert_summary(fn, args, top=12):
    """The dtype casts the model asks for: `convert` ops of the lowered program (before XLA's backend passes,
    so the same on a CPU and a GPU), counted with the elements they cast and grouped by Keras layer.
    Casts of one value to one dtype count once (three Dense layers casting the same input: XLA merges them).

    Returns:
        {"converts", "elements", "of_weights" (casts of the float32 variables to the compute dtype),
        "by_layer": [{"direction", "layer", "count", "elements"}], the `top` layers by elements}
    """
    text = fn.lower(*args).as_text(debug_info=True)
    locations = dict(re.findall(r"^(#loc\d+) = loc\(\"([^\"]*)\"", text, re.M))
    count, elements = collections.Counter(), collections.Counter()
    weights, seen = 0, set()
    for line in text.splitlines():
        match = re.search(r"stablehlo\.convert (%\w+) : \(tensor<([^>]*)>\) -> (tensor<[^>]*>) loc\((#loc\d+)\)", line)
        if not match or match.group(1, 3) in seen:
            continue
        operand, shape, target, loc = match.groups()
        seen.add((operand, target))
        size = int(np.prod([int(d) for d in shape.split("x")[:-1]] or [1]))
        key = _layer_of(locations.get(loc, "?/?/?"))
        count[key] += 1
        elements[key] += size
        weights += operand.startswith("%arg")
    return {"converts": sum(count.values()), "elements": sum(elements.values()), "of_weights": weights,
            "by_layer": [{"direction": d, "layer": layer, "count": count[(d, layer)], "elements": n}
                         for (d, layer), n in elements.most_common(top)]}


def _instructions(fn, args):
    """{instruction name: (output shape, the op_name of its metadata)} of the compiled program's entry."""
    text = fn.lower(*args).compile().as_text()
    entry = text[text.index("ENTRY"):]
    found = {}
    for line in entry.splitlines():
        match = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if match:
            op_name = re.search(r'op_name="([^"]+)"', line)
            found[match.group(1)] = (match.group(2), op_name.group(1) if op_name else "")
    return found


def trace_breakdown(fn, args, trace_dir, repeats=2, top=12):
    """Where one compiled step's time goes, read from a `jax.profiler` trace of `repeats` calls.

    Every op the XLA runtime ran (a fusion, a dot, a copy) is timed by the trace on the thread
    that ran it; ops are grouped by kind (the instruction name without its number, e.g.
    "copy_bitcast_fusion") and output shape, and summed per step over threads.

    Returns:
        {"wall_ms", "op_ms" (summed over threads), "top": [{"op", "shape", "ms", "share", "count",
        "layer" (one op_name of the group: the Keras layer path, "transpose(...)" for the backward)}]}
    """
    import glob

    import jax

    instructions = _instructions(fn, args)
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(repeats):
            jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - start) / repeats * 1000
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    profile = jax.profiler.ProfileData.from_file(files[-1])
    groups, counts, layers = collections.Counter(), collections.Counter(), {}
    for plane in profile.planes:
        for line in plane.lines:
            if "XLA" not in line.name:  # the runtime's worker threads; not Python's
                continue
            for event in line.events:
                if event.name not in instructions:  # executor bookkeeping, not a compiled op
                    continue
                shape, op_name = instructions[event.name]
                key = (re.sub(r"\.\d+$", "", event.name), shape)
                groups[key] += event.duration_ns / repeats / 1e6
                counts[key] += 1 / repeats
                layers.setdefault(key, op_name)
    total = sum(groups.values())
    return {"wall_ms": round(wall, 1), "op_ms": round(total, 1),
            "top": [{"op": op, "shape": shape, "ms": round(ms, 1), "share": round(ms / total, 3),
                     "count": round(counts[(op, shape)]), "layer": layers[(op, shape)]}
                    for (op, shape), ms in groups.most_common(top)]}


def build_models(config_name):
    import keras_hub

    preset, size, classes = CONFIGS[config_name]
    c = vitkeras.get_config(preset)
    ours = vitkeras.build_vit(c, image_size=size, num_classes=classes, seed=0)
    backbone = keras_hub.models.ViTBackbone(image_shape=(size, size, 3), patch_size=c.patch_size,
                                            num_layers=c.num_layers, num_heads=c.num_heads, hidden_dim=c.hidden_dim,
                                            mlp_dim=c.mlp_dim)
    images = keras.Input((size, size, 3))
    theirs = keras.Model(images, keras.layers.Dense(classes)(backbone(images)[:, 0]), name="keras_hub_vit")
    return c, size, classes, ours, theirs, backbone


class _Attention(keras.layers.Layer):
    """Attention alone on (B, T, h, d) queries = keys = values: the block's two paths, nothing else."""

    def __init__(self, explicit, **kwargs):
        super().__init__(**kwargs)
        self.explicit = explicit

    def call(self, q):
        if not self.explicit:
            return keras.ops.dot_product_attention(q, q, q, flash_attention=False)  # (B, T, h, d)
        logits = keras.ops.einsum("bqhd,bkhd->bhqk", q, q) / float(np.sqrt(q.shape[-1]))  # (B, h, T, T)
        weights = keras.ops.softmax(keras.ops.cast(logits, "float32"), axis=-1)
        return keras.ops.einsum("bhqk,bkhd->bqhd", keras.ops.cast(weights, q.dtype), q)  # (B, T, h, d)


class _Gelu(keras.layers.Layer):
    def __init__(self, approximate, **kwargs):
        super().__init__(**kwargs)
        self.approximate = approximate

    def call(self, x):
        return keras.ops.gelu(x, approximate=self.approximate)


def pieces(c, size, batch, ours, backbone, rng):
    """{name: (jitted gradient function, args)} for every piece of both implementations."""
    tokens = (size // c.patch_size) ** 2 + 1
    images = rng.uniform(0, 1, (batch, size, size, 3)).astype("float32")
    x = rng.normal(size=(batch, tokens, c.hidden_dim)).astype("float32")  # (B, T, D)
    heads = rng.normal(size=(batch, tokens, c.num_heads, c.hidden_dim // c.num_heads)).astype("float32")
    hub_embedding = next(layer for layer in backbone.layers if layer.__class__.__name__ == "ViTPatchingAndEmbedding")
    embed_ours = keras.Sequential([keras.Input((size, size, 3)), Patches(c.patch_size),
                                   ours.get_layer("patch_encoder")], name="embedding")
    block_ours = ours.get_layer("encoder_block_0")
    hub_encoder = next(layer for layer in backbone.layers if layer.__class__.__name__ == "ViTEncoder")
    hub_block = hub_encoder.encoder_layers[0]
    stack_ours = keras.Sequential([keras.Input((tokens, c.hidden_dim)),
                                   *[ours.get_layer(f"encoder_block_{i}") for i in range(c.num_layers)],
                                   ours.get_layer("encoder_norm")], name="encoder")
    mlp_ours = keras.Sequential([keras.Input((tokens, c.hidden_dim)), block_ours.mlp_hidden,
                                 _Gelu(False), block_ours.mlp_output], name="mlp")
    norm = keras.layers.LayerNormalization(epsilon=1e-6)
    norm.build(x.shape)
    hidden = rng.normal(size=(batch, tokens, c.mlp_dim)).astype("float32")
    return {
        "embedding vitkeras (Patches + Dense E + E_pos)": gradient_step(embed_ours, images, wrt_input=False),
        "embedding keras-hub (Conv2D + Embedding)": gradient_step(hub_embedding, images, wrt_input=False),
        "encoder vitkeras (L blocks + LayerNorm)": gradient_step(stack_ours, x),
        "encoder keras-hub (ViTEncoder)": gradient_step(hub_encoder, x),
        "block vitkeras": gradient_step(block_ours, x),
        "block keras-hub": gradient_step(hub_block, x),
        "attention, fused ops.dot_product_attention": gradient_step(_Attention(False), heads),
        "attention, explicit einsum-softmax-einsum": gradient_step(_Attention(True), heads),
        "LayerNorm": gradient_step(norm, x),
        "GELU exact (erf)": gradient_step(_Gelu(False), hidden),
        "GELU tanh": gradient_step(_Gelu(True), hidden),
        "MLP vitkeras (Dense, GELU exact, Dense)": gradient_step(mlp_ours, x),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="B/16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--trace", default=None, help="write a jax.profiler trace of both full steps here and report "
                        "the ops they spend their time in")
    parser.add_argument("--precision", choices=["float32", "mixed_bfloat16", "mixed_float16"], default="float32",
                        help="Keras dtype policy of both models (mixed: the casts they ask for are counted by layer)")
    parser.add_argument("--no-pieces", action="store_true", help="time the full steps only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if keras.config.backend() != "jax":
        parser.error(f"run with KERAS_BACKEND=jax (got {keras.config.backend()})")
    import jax

    keras.config.set_dtype_policy(args.precision)

    rng = np.random.default_rng(0)
    c, size, classes, ours, theirs, backbone = build_models(args.config)
    images = rng.uniform(0, 255, (args.batch, size, size, 3)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, args.batch)]
    full = {"full step vitkeras": gradient_step(ours, images, labels),
            "full step keras-hub": gradient_step(theirs, images, labels)}
    report = {"config": args.config, "batch": args.batch, "device": str(jax.devices()[0]),
              "machine": machine_description(), "keras": keras.__version__, "jax": jax.__version__,
              "date": time.strftime("%Y-%m-%d"), "precision": args.precision,
              "command": "KERAS_BACKEND=jax python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
              "full": time_steps(full, args.rounds, args.repeats),
              "hlo": {name: hlo_summary(*fa) for name, fa in full.items()},
              "casts": {name: convert_summary(*fa) for name, fa in full.items()}}
    if args.trace:
        report["trace"] = {}
        for number, (name, (fn, fargs)) in enumerate(full.items()):
            try:
                report["trace"][name] = trace_breakdown(fn, fargs, os.path.join(args.trace, str(number)))
            except Exception as error:  # noqa: BLE001 - the timings above stand without a trace
                print(f"no jax.profiler trace of {name}: {error}")
                report["trace"][name] = f"failed: {error}"
    report["pieces"] = {} if args.no_pieces else time_steps(pieces(c, size, args.batch, ours, backbone, rng),
                                                             args.rounds, args.repeats)
    for section in ("full", "pieces"):
        for name, t in report[section].items():
            print(f"{name:<50} {t['ms']:>9.2f} ms  (min {t['min']:.2f}, max {t['max']:.2f})")
    for name, breakdown in report.get("trace", {}).items():
        if isinstance(breakdown, str):
            continue
        print(f"{name}: {breakdown['wall_ms']:.0f} ms per step traced, {breakdown['op_ms']:.0f} ms of ops summed over "
              f"threads; the ops it spends most in:")
        for row in breakdown["top"]:
            print(f"  {row['ms']:8.1f} ms {row['share']:6.1%}  {row['count']:>4} x {row['op']:<26} {row['shape']:<28} "
                  f"{row['layer'][-80:]}")
    for name, h in report["hlo"].items():
        top = ", ".join(f"{k} {v}" for k, v in list(h["ops"].items())[:12])
        print(f"{name}: {sum(h['ops'].values())} ops ({top}); dtypes {h['dtypes']}")
    for name, casts in report["casts"].items():
        print(f"{name}: {casts['converts']} casts asked for ({casts['of_weights']} of weights), "
              f"{casts['elements'] / args.batch / 1e6:.2f} M elements per image; by layer:")
        for row in casts["by_layer"]:
            print(f"  {row['direction']:<8} {row['layer']:<40} {row['count']:>5} casts {row['elements'] / args.batch:>12,.0f} "
                  f"elements per image")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
