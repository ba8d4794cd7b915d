"""Pretrained ViT and DINOv2 checkpoints, loaded into the layers built in this course.

A Hugging Face checkpoint is a directory with `config.json` (the architecture),
`model.safetensors` (the tensors, by name) and usually `preprocessor_config.json`
(image size, mean, std). `load_pretrained` reads the three, builds the same
`build_vit` model a student trains from scratch, and copies every tensor into
`Patches` / `PatchEncoder` / `TransformerBlock` weights. No PyTorch and no
`transformers` are needed: the tensors are read with the `safetensors` package.

The returned model takes RGB images with values in [0, 255]: its first layer
applies the checkpoint's own scaling, mean and std, so it cannot be fed wrongly
normalised images by accident.

Supported `model_type`s: "vit" (`ViTModel`, `ViTForImageClassification`, e.g.
google/vit-base-patch16-224-in21k) and "dinov2" (`Dinov2Model`, e.g.
facebook/dinov2-small: patch 14, LayerScale, position embeddings trained on a
37x37 grid and resampled to the grid you ask for).

Example (a random-weight checkpoint in the real format):
>>> import tempfile
>>> directory = tempfile.mkdtemp()
>>> _ = save_random_checkpoint(directory, "vit", hidden_size=32, num_hidden_layers=1,
...                            num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
>>> model = load_pretrained(directory, num_classes=2)
>>> model.output_shape
(None, 2)
"""

import dataclasses
import json
import math
import os

import keras
import numpy as np

from vitkeras.layers import TransformerBlock, resample_position_embedding
from vitkeras.models import ViTConfig, build_vit

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
SUPPORTED_MODEL_TYPES = ("vit", "dinov2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The preprocessing each family was trained with, for checkpoints without a
# preprocessor_config.json: the original ViT scales to [-1, 1]; DINOv2 uses
# ImageNet statistics and 224 px crops.
DEFAULT_PREPROCESSING = {
    "vit": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    "dinov2": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "image_size": 224},
}

# Tensors a checkpoint may hold that an image encoder does not use: the
# pre-logits "pooler", an ImageNet classifier (fine-tuning replaces it with a
# new zero-initialised head, paper section 3.2), DINOv2's mask token (only
# used for masked-image training).
IGNORED_TENSORS = ("pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias",
                   "embeddings.mask_token")

# Where each tensor of one encoder block goes: checkpoint name -> (block sublayer, kind).
_BLOCK_TENSORS = {
    "vit": {
        "layernorm_before": ("norm1", "norm"),
        "attention.attention.query": ("query", "dense"),
        "attention.attention.key": ("key", "dense"),
        "attention.attention.value": ("value", "dense"),
        "attention.output.dense": ("attention_output", "dense"),
        "layernorm_after": ("norm2", "norm"),
        "intermediate.dense": ("mlp_hidden", "dense"),
        "output.dense": ("mlp_output", "dense"),
    },
    "dinov2": {
        "norm1": ("norm1", "norm"),
        "attention.attention.query": ("query", "dense"),
        "attention.attention.key": ("key", "dense"),
        "attention.attention.value": ("value", "dense"),
        "attention.output.dense": ("attention_output", "dense"),
        "layer_scale1": ("attention_scale", "scale"),
        "norm2": ("norm2", "norm"),
        "mlp.fc1": ("mlp_hidden", "dense"),
        "mlp.fc2": ("mlp_output", "dense"),
        "layer_scale2": ("mlp_scale", "scale"),
    },
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: unreadable, unsupported or not matching the model."""


class CheckpointUnavailableError(OSError):
    """A checkpoint that is neither a local directory nor downloadable now."""


@dataclasses.dataclass(frozen=True)
class PretrainedInfo:
    """What `config.json` and `preprocessor_config.json` say about a checkpoint.

    Args:
        model_type: "vit" or "dinov2".
        config: the equivalent `ViTConfig`.
        grid_size: (rows, columns) of patches the position embeddings were trained on.
        image_size: the resolution the checkpoint expects (its crop size).
        mean, std: per-channel normalisation after scaling by `rescale_factor`.
        rescale_factor: usually 1/255.
        qkv_bias: whether query, key and value have biases.
        directory: where the files are.
    """

    model_type: str
    config: ViTConfig
    grid_size: tuple
    image_size: tuple
    mean: tuple
    std: tuple
    rescale_factor: float
    qkv_bias: bool
    directory: str


# --------------------------------------------------------------------------- #
# Finding and reading the files
# --------------------------------------------------------------------------- #
def resolve_checkpoint(id_or_path, cache_dir=None):
    """A local directory holding the checkpoint: `id_or_path` itself, or a Hub download.

    Args:
        id_or_path: a directory (or its model.safetensors file), or a Hugging
            Face Hub id such as "google/vit-base-patch16-224-in21k".
        cache_dir: where downloads are cached (default: huggingface_hub's, ~/.cache/huggingface).

    Raises:
        FileNotFoundError: a path that does not exist.
        CheckpointUnavailableError: a Hub id that could not be downloaded, with what to do instead.
    """
    path = os.path.expanduser(str(id_or_path))
    if os.path.isdir(path):
        return path
    if os.path.isfile(path):
        if os.path.basename(path) in (WEIGHTS_NAME, CONFIG_NAME):
            return os.path.dirname(path) or "."
        raise CheckpointError(f"{path} is a file; give the checkpoint's directory (with {CONFIG_NAME} and {WEIGHTS_NAME}).")
    if path.startswith((".", "/", "~")) or path.count("/") != 1 or "\\" in path:
        raise FileNotFoundError(f"No checkpoint directory {path!r}, and it is not a Hub id of the form 'owner/name'.")
    return _download(path, cache_dir)


def _download(repo_id, cache_dir):
    try:
        import huggingface_hub
    except ImportError as error:  # pragma: no cover - a dependency of vitkeras
        raise CheckpointUnavailableError(f"Downloading {repo_id!r} needs huggingface_hub: pip install huggingface_hub") from error
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            allow_patterns=[CONFIG_NAME, PREPROCESSOR_NAME, "model*.safetensors", WEIGHTS_INDEX_NAME],
            cache_dir=cache_dir,
        )
    except Exception as error:  # network, authentication, missing repository: all end here
        raise CheckpointUnavailableError(
            f"Could not download {repo_id!r} from the Hugging Face Hub ({type(error).__name__}: {error}). "
            f"There is no local directory of that name either. On a machine with internet, run\n"
            f"    hf download {repo_id} {CONFIG_NAME} {WEIGHTS_NAME} {PREPROCESSOR_NAME} --local-dir {repo_id.split('/')[-1]}\n"
            f"(or save those files from https://huggingface.co/{repo_id}/tree/main), copy the directory here "
            f"and pass its path instead of the id."
        ) from error


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}).") from error


def read_tensors(directory):
    """All tensors of a checkpoint directory as NumPy arrays, by name (no PyTorch needed).

    Reads `model.safetensors` or the shards listed in `model.safetensors.index.json`.

    Raises:
        FileNotFoundError: no safetensors file (e.g. only pytorch_model.bin).
        CheckpointError: a truncated or corrupt file.
    """
    from safetensors.numpy import load_file

    single, index = os.path.join(directory, WEIGHTS_NAME), os.path.join(directory, WEIGHTS_INDEX_NAME)
    if os.path.exists(single):
        files = [single]
    elif os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no \"weight_map\" naming the shard of each tensor.")
        files = [os.path.join(directory, f) for f in sorted(set(weight_map.values()))]
    else:
        found = ", ".join(sorted(os.listdir(directory))) or "nothing"
        raise FileNotFoundError(
            f"No {WEIGHTS_NAME} in {directory} (found: {found}). vitkeras reads safetensors only; "
            f"most Hub checkpoints have one (see the repository's files, or its refs/pr/ conversion)."
        )
    tensors = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except Exception as error:  # safetensors raises its own error type for bad headers and sizes
            size = os.path.getsize(file) if os.path.exists(file) else 0
            raise CheckpointError(
                f"{file} ({size:,} bytes) is not a readable safetensors file: {error}. It may be truncated by an "
                f"interrupted download: delete it and download it again."
            ) from error
    return tensors


def read_pretrained_info(directory):
    """Decodes `config.json` (and `preprocessor_config.json`) into a `PretrainedInfo`."""
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"No {CONFIG_NAME} in {directory}; a Hugging Face checkpoint needs it.")
    hf = _read_json(config_path)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} in {config_path} is not supported; vitkeras loads {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size") if k not in hf]
    if missing:
        raise CheckpointError(f"{config_path} lacks {', '.join(missing)}.")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} in {config_path} is not supported; vitkeras's MLP uses exact 'gelu'.")
    if hf.get("use_swiglu_ffn"):
        raise CheckpointError(f"{config_path} uses a SwiGLU MLP (DINOv2-giant); vitkeras's MLP is the paper's GELU MLP.")
    patch_size, image_size = _square(hf["patch_size"], "patch_size"), _square(hf["image_size"], "image_size")
    hidden = hf["hidden_size"]
    mlp_dim = hf["intermediate_size"] if model_type == "vit" else int(hidden * hf.get("mlp_ratio", 4))
    config = ViTConfig(
        patch_size=patch_size,
        hidden_dim=hidden,
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        mlp_dim=mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        layer_scale=hf.get("layerscale_value", 1.0) if model_type == "dinov2" else None,
        class_token=True,
        position_embedding="learned",
        pooling="cls",
        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12 if model_type == "vit" else 1e-6),
    )
    defaults = DEFAULT_PREPROCESSING[model_type]
    pre_path = os.path.join(directory, PREPROCESSOR_NAME)
    pre = _read_json(pre_path) if os.path.exists(pre_path) else {}
    crop = pre.get("crop_size") if pre.get("do_center_crop") else pre.get("size")
    if isinstance(crop, dict) and "height" in crop:
        expected_size = (crop["height"], crop["width"])
    elif isinstance(crop, dict) and "shortest_edge" in crop:
        expected_size = (crop["shortest_edge"],) * 2
    elif isinstance(crop, int):  # older preprocessor configs: "size": 224
        expected_size = (crop, crop)
    else:
        expected_size = (defaults.get("image_size", image_size),) * 2
    normalize = pre.get("do_normalize", True)
    return PretrainedInfo(
        model_type=model_type,
        config=config,
        grid_size=(image_size // patch_size,) * 2,
        image_size=tuple(expected_size),
        mean=tuple(pre.get("image_mean", defaults["mean"])) if normalize else (0.0, 0.0, 0.0),
        std=tuple(pre.get("image_std", defaults["std"])) if normalize else (1.0, 1.0, 1.0),
        rescale_factor=pre.get("rescale_factor", 1 / 255) if pre.get("do_rescale", True) else 1.0,
        qkv_bias=hf.get("qkv_bias", True),
        directory=directory,
    )


def _square(value, name):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"Non-square {name} {value} is not supported.")
        value = value[0]
    return int(value)


# --------------------------------------------------------------------------- #
# Checkpoint tensors -> vitkeras weights
# --------------------------------------------------------------------------- #
def _conv_to_dense(weight):
    """(D, C, P, P) convolution kernel -> (P*P*C, D) kernel of E, in `Patches`' (row, col, channel) order."""
    d = weight.shape[0]
    return np.transpose(weight, (2, 3, 1, 0)).reshape(-1, d)  # (P, P, C, D) -> (P*P*C, D)


def _weight_plan(model, info):
    """{checkpoint name: (keras variable, transform)} for every weight of `model`'s encoder."""
    encoder = model.get_layer("patch_encoder")
    source_grid = info.grid_size

    def position(array):
        num_positions = array.shape[-2] - 1
        side = math.isqrt(num_positions)
        grid = (side, side) if side * side == num_positions else source_grid
        return resample_position_embedding(array, grid, encoder.grid_size, num_prefix_tokens=1)  # (1, 1+N, D)

    plan = {
        "embeddings.cls_token": (encoder.class_embedding, None),
        "embeddings.position_embeddings": (encoder.position_embedding_weight, position),
        "embeddings.patch_embeddings.projection.weight": (encoder.projection.kernel, _conv_to_dense),
        "embeddings.patch_embeddings.projection.bias": (encoder.projection.bias, None),
    }
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
    for i, block in enumerate(blocks):
        for name, (sublayer, kind) in _BLOCK_TENSORS[info.model_type].items():
            prefix = f"encoder.layer.{i}.{name}"
            if kind == "scale":
                plan[f"{prefix}.lambda1"] = (getattr(block, sublayer, None), None)
            elif kind == "norm":
                layer = getattr(block, sublayer)
                plan[f"{prefix}.weight"] = (layer.gamma, None)
                plan[f"{prefix}.bias"] = (layer.beta, None)
            else:
                layer = getattr(block, sublayer)
                plan[f"{prefix}.weight"] = (layer.kernel, np.transpose)  # torch Linear (out, in) -> (in, out)
                plan[f"{prefix}.bias"] = (layer.bias, None)
    norm = model.get_layer("encoder_norm")
    plan["layernorm.weight"] = (norm.gamma, None)
    plan["layernorm.bias"] = (norm.beta, None)
    return plan, blocks


def _strip_prefix(tensors, model_type):
    """ViTForImageClassification stores the encoder under "vit.", Dinov2For... under "dinov2."."""
    prefix = f"{model_type}."
    if any(name.startswith(prefix) for name in tensors):
        return {name.removeprefix(prefix): value for name, value in tensors.items()}
    return tensors


def _listing(title, items, limit=8):
    shown = "; ".join(items[:limit]) + (f"; ... ({len(items) - limit} more)" if len(items) > limit else "")
    return f"{title} ({len(items)}): {shown}"


def load_pretrained_weights(model, id_or_path, cache_dir=None):
    """Copies a checkpoint's encoder into an existing `build_vit` model, all or nothing.

    Every tensor is read, transformed and checked against the model (names,
    shapes, heads, LayerNorm epsilon, LayerScale) before any weight is assigned,
    so a load that fails leaves the model's weights exactly as they were. The
    model's head (if any) is left as it is.

    Args:
        model: a model from `build_vit` with the checkpoint's width, depth and patch size
            (any image size: position embeddings are resampled bicubically, as the reference does).
        id_or_path: checkpoint directory or Hub id.
        cache_dir: Hub download cache.

    Returns:
        The `PretrainedInfo` of the checkpoint.

    Raises:
        CheckpointError: listing every missing, unexpected and mismatched tensor.
    """
    directory = resolve_checkpoint(id_or_path, cache_dir)
    info = read_pretrained_info(directory)
    tensors = _strip_prefix(read_tensors(directory), info.model_type)
    plan, blocks = _weight_plan(model, info)
    if not info.qkv_bias:  # query, key and value without biases are the same as zero biases
        for name, (variable, _) in plan.items():
            if ".attention.attention." in name and name.endswith(".bias"):
                tensors.setdefault(name, np.zeros(variable.shape, "float32"))

    problems = []
    config = info.config
    if len(blocks) != config.num_layers:
        problems.append(f"the model has {len(blocks)} Transformer blocks, the checkpoint {config.num_layers}")
    for block in blocks[:1]:
        for what, mine, theirs in (
            ("num_heads", block.num_heads, config.num_heads),
            ("layer_norm_epsilon", block.layer_norm_epsilon, config.layer_norm_epsilon),
            ("layer_scale", block.layer_scale is not None, config.layer_scale is not None),
        ):
            if mine != theirs:
                problems.append(f"{what}: model {mine}, checkpoint {theirs}")
    missing = sorted(name for name in plan if name not in tensors)
    unexpected = sorted(name for name in tensors if name not in plan and name not in IGNORED_TENSORS)
    mismatched, values = [], []
    for name, (variable, transform) in plan.items():
        if name not in tensors:
            continue
        if variable is None:
            mismatched.append(f"{name}: the model has no such weight")
            continue
        array = tensors[name]
        value = transform(array) if transform is not None else array
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(f"{name} {tuple(array.shape)} -> {variable.path} {tuple(variable.shape)}")
            continue
        values.append((variable, value))
    if missing:
        problems.append(_listing("missing tensors", missing))
    if unexpected:
        problems.append(_listing("unexpected tensors", unexpected))
    if mismatched:
        problems.append(_listing("shape mismatches (checkpoint -> model)", mismatched))
    if problems:
        raise CheckpointError(
            f"Checkpoint {directory} ({info.model_type}) does not match model {model.name!r}; no weight was changed.\n  "
            + "\n  ".join(problems)
        )
    for variable, value in values:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    return info


def check_image_size(info, image_size):
    """Raises ValueError unless `image_size` (one side) fits the checkpoint: a multiple of its patch size.

    Example:
    >>> info = PretrainedInfo("dinov2", ViTConfig(patch_size=14), (16, 16), (224, 224), IMAGENET_MEAN,
    ...                       IMAGENET_STD, 1 / 255, True, ".")
    >>> check_image_size(info, 112)
    >>> check_image_size(info, 100)
    Traceback (most recent call last):
    ...
    ValueError: Image size 100 does not fit this dinov2 checkpoint: its patches are 14x14, so the image side must be a multiple of 14 (e.g. 98 or 112; the checkpoint's own is 224).
    """
    patch = info.config.patch_size
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < patch \
            or image_size % patch:
        side = int(image_size) if isinstance(image_size, (int, np.integer)) else patch
        nearest = sorted({max(patch, side // patch * patch), (side // patch + 1) * patch})
        raise ValueError(
            f"Image size {image_size!r} does not fit this {info.model_type} checkpoint: its patches are "
            f"{patch}x{patch}, so the image side must be a multiple of {patch} "
            f"(e.g. {' or '.join(map(str, nearest))}; the checkpoint's own is {info.image_size[0]})."
        )


# --------------------------------------------------------------------------- #
# The public entry point
# --------------------------------------------------------------------------- #
def preprocessing_layer(info, name="preprocessing"):
    """The checkpoint's own input scaling as a Keras layer: [0, 255] RGB -> (x * factor - mean) / std."""
    scale = [info.rescale_factor / s for s in info.std]
    offset = [-m / s for m, s in zip(info.mean, info.std)]
    return keras.layers.Rescaling(scale=scale, offset=offset, name=name)


def load_pretrained(
    id_or_path,
    image_size=None,
    num_classes=None,
    linear_probe=False,
    pooling=None,
    include_preprocessing=True,
    cache_dir=None,
    seed=None,
    name=None,
    **overrides,
):
    """A vitkeras ViT with a pretrained checkpoint's weights, ready to use or fine-tune.

    Args:
        id_or_path: a local checkpoint directory or a Hub id ("google/vit-base-patch16-224-in21k",
            "facebook/dinov2-small").
        image_size: H or (H, W) to fine-tune at; None uses the checkpoint's own (224 for
            these). Position embeddings are resampled bicubically to the new grid.
        num_classes: None returns the final-LayerNorm tokens (B, 1+N, D) (transformers'
            `last_hidden_state`); K adds a new zero-initialised K-class head (paper, section 3.2).
        linear_probe: freeze everything but the new head.
        pooling: "cls" (default) or "gap" for the new head.
        include_preprocessing: True (default) makes the model take [0, 255] RGB images.
        cache_dir: Hub download cache.
        seed: seed of the new head and dropout.
        name: model name; defaults to the checkpoint directory's name.
        **overrides: fields of `ViTConfig` that do not change weights, e.g. `dropout=0.1, drop_path=0.1`.

    Raises:
        CheckpointError, CheckpointUnavailableError, FileNotFoundError: with what was
        wrong and what to do.
    """
    directory = resolve_checkpoint(id_or_path, cache_dir)
    info = read_pretrained_info(directory)
    fixed = {"patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim", "layer_scale", "class_token",
             "position_embedding", "layer_norm_epsilon", "representation_size"}
    changed = sorted(fixed & set(overrides))
    if changed:
        raise ValueError(f"Cannot override {', '.join(changed)} of a pretrained checkpoint (they define its weights).")
    if linear_probe and num_classes is None:
        raise ValueError("linear_probe=True needs num_classes (the head to train).")
    config = info.config.replace(**overrides)
    if name is None:
        name = os.path.basename(os.path.normpath(str(id_or_path))) or "pretrained_vit"
    model = build_vit(
        config,
        image_size=image_size or info.image_size,
        num_classes=num_classes if num_classes is not None else 1,
        include_top=num_classes is not None,
        pooling=pooling,
        channels=3,
        seed=seed,
        name=name,
        preprocessing=preprocessing_layer(info) if include_preprocessing else None,
    )
    load_pretrained_weights(model, directory)
    if linear_probe:
        for layer in model.layers:
            layer.trainable = layer.name == "head"
    return model


# --------------------------------------------------------------------------- #
# Random-weight checkpoints in the real format (tests, smoke runs, offline demos)
# --------------------------------------------------------------------------- #
def save_random_checkpoint(directory, model_type="vit", seed=0, **config):
    """Writes a checkpoint with random weights in the Hugging Face layout (no transformers needed).

    The files are what `save_pretrained` writes (`config.json`, `model.safetensors`,
    `preprocessor_config.json`), so loaders can be tested and notebooks smoke-run offline.

    Args:
        directory: created if needed.
        model_type: "vit" or "dinov2".
        seed: NumPy seed of the weights.
        **config: `config.json` fields, e.g. hidden_size=32, num_hidden_layers=1,
            num_attention_heads=4, intermediate_size=64 (vit) or mlp_ratio=4 (dinov2),
            image_size=32, patch_size=8.

    Returns:
        `directory`.
    """
    from safetensors.numpy import save_file

    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {model_type!r}.")
    hf = {"model_type": model_type, "hidden_act": "gelu", "num_channels": 3, "qkv_bias": True}
    hf.update({"layer_norm_eps": 1e-12} if model_type == "vit" else {"layer_norm_eps": 1e-6, "layerscale_value": 1.0, "mlp_ratio": 4})
    hf.update(config)
    hf["architectures"] = ["ViTModel" if model_type == "vit" else "Dinov2Model"]
    rng = np.random.default_rng(seed)
    d, p, c = hf["hidden_size"], hf["patch_size"], hf["num_channels"]
    mlp = hf.get("intermediate_size") or int(d * hf["mlp_ratio"])
    grid = hf["image_size"] // p

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype("float32")

    tensors = {
        "embeddings.cls_token": normal(1, 1, d),
        "embeddings.position_embeddings": normal(1, 1 + grid * grid, d),
        "embeddings.patch_embeddings.projection.weight": normal(d, c, p, p),
        "embeddings.patch_embeddings.projection.bias": normal(d),
        "layernorm.weight": 1 + normal(d, std=0.1),
        "layernorm.bias": normal(d),
    }
    if model_type == "dinov2":
        tensors["embeddings.mask_token"] = np.zeros((1, d), "float32")
    for i in range(hf["num_hidden_layers"]):
        for name, (sublayer, kind) in _BLOCK_TENSORS[model_type].items():
            prefix = f"encoder.layer.{i}.{name}"
            if kind == "norm":
                tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"] = 1 + normal(d, std=0.1), normal(d)
            elif kind == "scale":
                tensors[f"{prefix}.lambda1"] = 1 + normal(d, std=0.1)
            else:
                out_dim, in_dim = {"mlp_hidden": (mlp, d), "mlp_output": (d, mlp)}.get(sublayer, (d, d))
                tensors[f"{prefix}.weight"], tensors[f"{prefix}.bias"] = normal(out_dim, in_dim), normal(out_dim)
    os.makedirs(directory, exist_ok=True)
    save_file(tensors, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as file:
        json.dump(hf, file, indent=2)
    defaults = DEFAULT_PREPROCESSING[model_type]
    size = {"height": hf["image_size"], "width": hf["image_size"]}
    with open(os.path.join(directory, PREPROCESSOR_NAME), "w", encoding="utf-8") as file:
        json.dump({"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(defaults["mean"]),
                   "image_std": list(defaults["std"]), "do_resize": True, "size": size}, file, indent=2)
    return directory
