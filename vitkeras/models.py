"""ViT configurations, the paper's presets, and model builders.

Read top to bottom: `ViTConfig` (every default explained), the preset table
(paper Table 1, decoded like big_vision's "B/16" names), `build_vit` (Figure 1
of the paper as a functional Keras model), the CNN baseline, the hybrid ViT,
and `with_intermediates` (every block's tokens and attention weights for
inspection).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Optional

import keras

from vitkeras.layers import (
    POOLINGS,
    POSITION_EMBEDDINGS,
    Patches,
    PatchDropout,
    PatchEncoder,
    TokenPooling,
    TransformerBlock,
    _as_pair,
    _float32_if_mixed,
    check_image_shape,
    layer_seed,
    seeded_initializer,
)

__all__ = [
    "ViTConfig",
    "PRESETS",
    "VARIANTS",
    "get_config",
    "build_vit",
    "build_cnn",
    "build_hybrid_vit",
    "with_intermediates",
]


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Everything that decides a ViT's architecture.

    The defaults are ViT-B/16 from the paper's Table 1.
    """

    patch_size: int = 16  # P: side of a square patch in pixels; N = HW / P^2 tokens
    hidden_dim: int = 768  # D: token width ("Hidden size D" in Table 1)
    num_layers: int = 12  # L: number of Transformer blocks ("Layers")
    num_heads: int = 12  # h: attention heads; each head has D/h channels ("Heads")
    mlp_dim: int = 3072  # width of the MLP's hidden layer, 4D in every paper preset ("MLP size")
    dropout: float = 0.0  # after each Dense (except q, k, v) and after adding E_pos; paper: 0.1 for some runs
    attention_dropout: float = 0.0  # on the attention weights; the paper uses none
    drop_path: float = 0.0  # stochastic depth, largest at the last block (linear from 0); DeiT uses 0.1
    patch_dropout: float = 0.0  # patch tokens dropped at random in training (PatchDropout); 0: the paper's ViT
    layer_scale: Optional[float] = None  # LayerScale init on residual branches (DeiT-III, DINOv2); paper: none
    class_token: Optional[bool] = None  # None: a class token exactly when pooling == "cls"
    position_embedding: str = "learned"  # "learned" (paper), "sincos2d" (fixed) or "none" (ablation)
    pooling: str = "cls"  # image representation: "cls" token (paper) or "gap" over patch tokens
    representation_size: Optional[int] = None  # pre-logits Dense+tanh before the head (paper's pre-training)
    layer_norm_epsilon: float = 1e-6  # big_vision's; Hugging Face checkpoints use 1e-12 (ViT) or 1e-6 (DINOv2)

    def __post_init__(self):
        for name in ("patch_size", "hidden_dim", "num_layers", "num_heads", "mlp_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}.")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"ViTConfig: hidden_dim={self.hidden_dim} is not divisible by num_heads={self.num_heads}; "
                f"choose num_heads among {[h for h in range(1, 65) if self.hidden_dim % h == 0]}."
            )
        for name in ("dropout", "attention_dropout", "drop_path", "patch_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {getattr(self, name)!r}.")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"ViTConfig.position_embedding must be one of {list(POSITION_EMBEDDINGS)}, "
                f"got {self.position_embedding!r}."
            )
        if self.position_embedding == "sincos2d" and self.hidden_dim % 4:
            raise ValueError(
                f"ViTConfig: position_embedding='sincos2d' needs hidden_dim divisible by 4, got {self.hidden_dim}."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"ViTConfig.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}.")
        if self.pooling == "cls" and self.class_token is False:
            raise ValueError("ViTConfig: pooling='cls' needs class_token=True (or None); use pooling='gap'.")

    @property
    def uses_class_token(self):
        return self.pooling == "cls" if self.class_token is None else self.class_token

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(
                f"Unknown ViTConfig field(s) {sorted(unknown)}; fields are {[f.name for f in dataclasses.fields(self)]}."
            )
        return dataclasses.replace(self, **changes)


# Table 1 of the paper (B, L, H), Ti and S from DeiT / "How to train your ViT",
# and two small variants for 32x32 images that train in minutes on a CPU.
#            width D, depth L, MLP size, heads h
VARIANTS = {
    "Pico": (64, 2, 128, 4),  # ~0.07M params: the default data-efficiency run on the embedded dataset
    "Nano": (64, 4, 128, 4),  # ~0.2M params: smoke tests
    "Micro": (128, 6, 256, 4),  # ~0.8M params: CIFAR-scale from scratch on a CPU
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}

# Parameters in millions reported by the paper (Table 1) for reference in the demo.
PAPER_PARAMS_M = {"B": 86, "L": 307, "H": 632}

PRESET_NAMES = ("Pico/4", "Nano/4", "Micro/4", "Ti/16", "S/16", "B/16", "B/32", "L/16", "L/32", "H/14")


def _decode(name):
    """'B/16' -> ViTConfig of ViT-Base with 16x16 patches (any variant/patch pair decodes)."""
    match = re.fullmatch(r"([A-Za-z]+)/(\d+)", str(name))
    if not match or match.group(1) not in VARIANTS:
        raise ValueError(
            f"Unknown ViT preset {name!r}. Known presets: {list(PRESET_NAMES)}; any "
            f"'<variant>/<patch size>' with variant in {list(VARIANTS)} also works (e.g. 'B/8')."
        )
    width, depth, mlp, heads = VARIANTS[match.group(1)]
    return ViTConfig(
        patch_size=int(match.group(2)), hidden_dim=width, num_layers=depth, num_heads=heads, mlp_dim=mlp
    )


PRESETS = {name: _decode(name) for name in PRESET_NAMES}


def get_config(preset_or_config, **overrides):
    """A `ViTConfig` from a preset name ("B/16"), a config, or a dict of fields, with overrides applied.

    Example:
    >>> get_config("B/16", dropout=0.1).hidden_dim
    768
    """
    if isinstance(preset_or_config, ViTConfig):
        config = preset_or_config
    elif isinstance(preset_or_config, dict):
        config = ViTConfig().replace(**preset_or_config)
    elif isinstance(preset_or_config, str):
        config = PRESETS.get(preset_or_config) or _decode(preset_or_config)
    else:
        raise ValueError(
            f"Expected a preset name (one of {list(PRESET_NAMES)}), a ViTConfig or a dict, "
            f"got {type(preset_or_config).__name__}: {preset_or_config!r}."
        )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return config.replace(**overrides) if overrides else config


# --------------------------------------------------------------------------- #
# The encoder shared by the ViT and the hybrid
# --------------------------------------------------------------------------- #
def _patch_encoder(config, grid, seed):
    """Equation (1) for a config: E, the class token if pooling needs it, E_pos for the grid."""
    return PatchEncoder(
        config.hidden_dim,
        class_token=config.uses_class_token,
        position_embedding=config.position_embedding,
        dropout=config.dropout,
        grid_size=grid,
        seed=seed,
        name="patch_encoder",
    )


def _encoder(tokens, config, seed):
    """[PatchDropout], L Transformer blocks, the final LayerNorm: (B, T, D) -> (B, T, D) (fewer T in training)."""
    if config.patch_dropout:
        tokens = PatchDropout(
            config.patch_dropout,
            num_prefix_tokens=int(config.uses_class_token),
            seed=layer_seed(seed, "patch_dropout"),
            name="patch_dropout",
        )(tokens)  # (B, T, D) at inference; (B, 1+K, D) in training
    for i in range(config.num_layers):
        # Stochastic depth grows linearly with depth (DeiT), 0 at the first block.
        drop_path = config.drop_path * i / max(config.num_layers - 1, 1)
        tokens = TransformerBlock(
            num_heads=config.num_heads,
            mlp_dim=config.mlp_dim,
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            layer_scale=config.layer_scale,
            drop_path=drop_path,
            layer_norm_epsilon=config.layer_norm_epsilon,
            seed=None if seed is None else seed + 10 * (i + 1),
            name=f"encoder_block_{i}",
        )(tokens)  # (B, T, D)
    policy = _float32_if_mixed(keras.mixed_precision.dtype_policy())
    return keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, dtype=policy, name="encoder_norm")(
        tokens
    )  # (B, T, D)


def _head(tokens, config, num_classes, include_top, classifier_activation, seed=None):
    """Pooling, optional pre-logits layer and the zero-initialised classifier (float32)."""
    if not include_top:
        return tokens  # (B, T, D), like Hugging Face's last_hidden_state
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer with include_top=True, got {num_classes!r}.")
    y = TokenPooling(config.pooling, num_prefix_tokens=int(config.uses_class_token), name=f"{config.pooling}_pool")(
        tokens
    )  # (B, D)
    if config.representation_size:
        y = keras.layers.Dense(config.representation_size, activation="tanh", name="pre_logits",
                               kernel_initializer=seeded_initializer("glorot_uniform", layer_seed(seed, "pre_logits")))(y)
    return keras.layers.Dense(
        num_classes,
        kernel_initializer="zeros",  # paper, section 3.2: a zero-initialised D x K head
        activation=classifier_activation,
        dtype="float32",
        name="head",
    )(y)  # (B, K)


def build_vit(
    preset_or_config="B/16",
    image_size=224,
    num_classes=1000,
    pooling=None,
    include_top=True,
    channels=3,
    classifier_activation=None,
    seed=None,
    name=None,
    preprocessing=None,
    **overrides,
):
    """The Vision Transformer (paper Figure 1) as a functional `keras.Model`.

    image -> Patches -> PatchEncoder (E, [class], E_pos) -> [PatchDropout, in training,
    when `patch_dropout` > 0] -> L x TransformerBlock -> LayerNorm -> class token
    (or mean of patch tokens) -> Dense head.

    Args:
        preset_or_config: a preset name ("B/16", "Micro/4", any "<variant>/<P>"),
            a `ViTConfig` or a dict of its fields.
        image_size: H, or (H, W); multiples of the patch size.
        num_classes: K, outputs of the head (logits unless `classifier_activation`).
        pooling: "cls" or "gap"; None keeps the config's ("cls" for presets).
        include_top: False returns the final-LayerNorm tokens (B, T, D) instead of logits.
        channels: C of the input images.
        classifier_activation: activation of the head, None for logits.
        seed: one seed for initialisers, dropout and drop-path.
        name: model name; defaults to "vit_<preset>".
        preprocessing: optional Keras layer applied to the images first, e.g. the
            `Rescaling` a pretrained checkpoint expects (`vitkeras.load_pretrained` sets it).
        **overrides: any `ViTConfig` field, e.g. `dropout=0.1, drop_path=0.1`.

    Example:
    >>> model = build_vit("Nano/4", image_size=32, num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    config = get_config(preset_or_config, pooling=pooling, **overrides)
    height, width = _as_pair("image_size", image_size)
    check_image_shape((None, height, width, channels), config.patch_size, what="image_size")
    grid = (height // config.patch_size, width // config.patch_size)

    images = keras.Input((height, width, channels), name="images")  # (B, H, W, C)
    x = images if preprocessing is None else preprocessing(images)  # (B, H, W, C)
    patches = Patches(config.patch_size, name="patches")(x)  # (B, N, P*P*C)
    tokens = _patch_encoder(config, grid, seed)(patches)  # (B, 1+N, D)
    tokens = _encoder(tokens, config, seed)  # (B, 1+N, D)
    outputs = _head(tokens, config, num_classes, include_top, classifier_activation, seed)
    if name is None:
        name = "vit_" + (preset_or_config if isinstance(preset_or_config, str) else "custom")
    return keras.Model(images, outputs, name=re.sub(r"[^A-Za-z0-9_.-]", "_", name))


# --------------------------------------------------------------------------- #
# CNN baseline and the hybrid's stem
# --------------------------------------------------------------------------- #
def _conv_norm(x, filters, kernel, stride, name, activation=True, seed=None):
    initializer = seeded_initializer("glorot_uniform", layer_seed(seed, f"{name}_conv"))
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            kernel_initializer=initializer, name=f"{name}_conv")(x)
    # GroupNorm, as the paper's ResNets (BiT): no batch statistics, so no train/test
    # mismatch in the short, small-batch runs of this course (BatchNorm's moving
    # averages lag far behind there).
    x = keras.layers.GroupNormalization(groups=math.gcd(filters, 8), epsilon=1e-5, name=f"{name}_gn")(x)
    return keras.layers.Activation("relu", name=f"{name}_relu")(x) if activation else x


def _residual_block(x, filters, stride, name, seed=None):
    """ResNet basic block: two 3x3 conv-GroupNorm with a shortcut (1x1 conv when the shape changes)."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_norm(x, filters, 1, stride, f"{name}_shortcut", activation=False, seed=seed)
    y = _conv_norm(x, filters, 3, stride, f"{name}_a", seed=seed)
    y = _conv_norm(y, filters, 3, 1, f"{name}_b", activation=False, seed=seed)
    y = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{name}_out")(y)


def resnet_stages(x, width, stages, blocks_per_stage, name="stage", seed=None):
    """Stages of residual blocks; stage s has width * 2**s channels and halves H, W (except the first)."""
    for s in range(stages):
        for b in range(blocks_per_stage):
            stride = 2 if (s > 0 and b == 0) else 1
            x = _residual_block(x, width * 2**s, stride, name=f"{name}{s}_block{b}", seed=seed)
    return x  # (B, H / 2**(stages-1), W / 2**(stages-1), width * 2**(stages-1))


def _check_cnn_args(width, stages, blocks_per_stage, stem_stride=1):
    for arg, value in (("width", width), ("stages", stages), ("blocks_per_stage", blocks_per_stage),
                       ("stem_stride", stem_stride)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive integer, got {value!r}.")


def build_cnn(
    image_size=32,
    num_classes=10,
    width=32,
    stages=3,
    blocks_per_stage=2,
    channels=3,
    classifier_activation=None,
    seed=None,
    name="resnet_baseline",
    stem_stride=1,
):
    """A small ResNet-style CNN: the baseline with convolution's inductive bias.

    3x3 conv stem, `stages` stages of residual basic blocks (width doubling,
    resolution halving), global average pooling, Dense head. `width` is the
    knob that matches its parameter count to a ViT's (params grow ~ width^2).

    Args:
        image_size: H, or (H, W).
        num_classes: K.
        width: channels of the first stage.
        stages: number of stages.
        blocks_per_stage: residual blocks per stage.
        channels: C of the input.
        classifier_activation: None for logits.
        seed: seeds the initialisers.
        name: model name.
        stem_stride: stride of the stem (2 halves every feature map, as ResNet's stem does: a
            quarter of the compute, the same parameters).

    Example:
    >>> build_cnn(32, 10, width=16).output_shape
    (None, 10)
    """
    _check_cnn_args(width, stages, blocks_per_stage, stem_stride)
    height, width_px = _as_pair("image_size", image_size)
    images = keras.Input((height, width_px, channels), name="images")  # (B, H, W, C)
    x = keras.layers.Rescaling(1.0, name="cast")(images)  # accepts uint8: cast to the compute dtype
    x = _conv_norm(x, width, 3, stem_stride, "stem", seed=seed)  # (B, H / stride, W / stride, width)
    x = resnet_stages(x, width, stages, blocks_per_stage, seed=seed)  # (B, H', W', width * 2**(stages-1))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)  # (B, width * 2**(stages-1))
    outputs = keras.layers.Dense(num_classes, activation=classifier_activation, dtype="float32", name="head",
                                 kernel_initializer=seeded_initializer("glorot_uniform", layer_seed(seed, "head")))(x)
    return keras.Model(images, outputs, name=name)


def build_hybrid_vit(
    preset_or_config="Micro/4",
    image_size=32,
    num_classes=10,
    stem_width=32,
    stem_stages=2,
    blocks_per_stage=1,
    pooling=None,
    include_top=True,
    channels=3,
    classifier_activation=None,
    seed=None,
    name="hybrid_vit",
    **overrides,
):
    """The paper's hybrid (section 3.1): a CNN stem whose feature map is cut into 1x1 patches.

    image -> conv stem (ResNet stages, stride 2**(stem_stages-1)) -> Patches(1)
    -> the same PatchEncoder and Transformer encoder as `build_vit`. The
    preset's patch size is ignored: the stem's stride plays its part.

    Args:
        preset_or_config: encoder preset or config, as in `build_vit`.
        image_size: H, or (H, W); divisible by the stem's stride.
        num_classes: K.
        stem_width: channels of the stem's first stage.
        stem_stages: stages in the stem; the feature map is H / 2**(stem_stages-1).
        blocks_per_stage: residual blocks per stem stage.
        pooling, include_top, channels, classifier_activation, seed, **overrides: as in `build_vit`.
        name: model name.

    Example:
    >>> build_hybrid_vit("Nano/4", 32, 10, stem_width=8).output_shape
    (None, 10)
    """
    _check_cnn_args(stem_width, stem_stages, blocks_per_stage)
    config = get_config(preset_or_config, pooling=pooling, **overrides)
    height, width = _as_pair("image_size", image_size)
    stride = 2 ** (stem_stages - 1)
    check_image_shape((None, height, width, channels), stride, what="image_size (for the stem's stride)")
    images = keras.Input((height, width, channels), name="images")  # (B, H, W, C)
    x = keras.layers.Rescaling(1.0, name="cast")(images)
    x = _conv_norm(x, stem_width, 3, 1, "stem", seed=seed)  # (B, H, W, stem_width)
    x = resnet_stages(x, stem_width, stem_stages, blocks_per_stage, name="stem_stage", seed=seed)  # (B, H/s, W/s, C')
    patches = Patches(1, name="patches")(x)  # (B, N, C'), N = HW / s^2
    tokens = _patch_encoder(config, (height // stride, width // stride), seed)(patches)  # (B, 1+N, D)
    tokens = _encoder(tokens, config, seed)  # (B, 1+N, D)
    outputs = _head(tokens, config, num_classes, include_top, classifier_activation, seed)
    return keras.Model(images, outputs, name=name)


# --------------------------------------------------------------------------- #
# Where the parameters are
# --------------------------------------------------------------------------- #
PARAMETER_PARTS = (
    "convolutional stem",
    "patch embedding E",
    "class token and E_pos",
    "attention (MSA)",
    "MLP",
    "LayerNorm and LayerScale",
    "head",
)


def _part_of(path):
    top, _, rest = path.partition("/")
    if top == "patch_encoder":
        return "patch embedding E" if rest.startswith("projection") else "class token and E_pos"
    if top.startswith("encoder_block_"):
        sub = rest.split("/")[0]
        if sub in ("query", "key", "value", "attention_output"):
            return "attention (MSA)"
        if sub in ("mlp_hidden", "mlp_output"):
            return "MLP"
        return "LayerNorm and LayerScale"
    if top == "encoder_norm":
        return "LayerNorm and LayerScale"
    if top in ("head", "pre_logits"):
        return "head"
    if top.startswith("stem"):
        return "convolutional stem"
    return None


def parameter_breakdown(model):
    """Parameters of a vitkeras ViT by part of the paper's Figure 1.

    Args:
        model: from `build_vit`, `build_hybrid_vit` or `load_pretrained`.

    Returns:
        dict {part: number of parameters} over `PARAMETER_PARTS` (parts a model
        lacks are 0); the values sum to `model.count_params()`.

    Example:
    >>> parts = parameter_breakdown(build_vit("Nano/4", image_size=32, num_classes=10))
    >>> parts["patch embedding E"], parts["head"]  # 4*4*3*64 + 64; 64*10 + 10
    (3136, 650)
    """
    parts = dict.fromkeys(PARAMETER_PARTS, 0)
    for weight in model.weights:
        part = _part_of(weight.path)
        if part is None:
            raise ValueError(f"Weight {weight.path!r} of {model.name!r} is not part of a vitkeras ViT.")
        parts[part] += math.prod(weight.shape)
    return parts


# --------------------------------------------------------------------------- #
# Inspection
# --------------------------------------------------------------------------- #
class _BlockWithAttention(keras.layers.Layer):
    """Calls a TransformerBlock with return_attention_scores=True (same layer, same weights).

    A wrapper is needed because a functional graph expects every call of one
    layer to return the same number of outputs.
    """

    def __init__(self, block, **kwargs):
        super().__init__(name=f"{block.name}_with_attention", dtype=block.dtype_policy, **kwargs)
        self.block = block

    def call(self, tokens, training=None):
        return self.block(tokens, training=training, return_attention_scores=True)

    def compute_output_spec(self, tokens, training=None):
        return self.block.compute_output_spec(tokens, return_attention_scores=True)


def with_intermediates(model):
    """A model sharing `model`'s weights that also returns every block's tokens and attention.

    Works for any model built by `build_vit` or `build_hybrid_vit` (or loaded
    from `.keras`): after the patch encoder it calls the same blocks again, with
    `return_attention_scores=True`. The returned model is for inspection and is
    not meant to be saved; save `model` itself.

    Returns:
        keras.Model mapping images to a dict: "output" (the model's output),
        "tokens" (list of L tensors (B, T, D), the output of each block) and
        "attention" (list of L tensors (B, h, T, T), float32, rows sum to 1).

    Example:
    >>> import numpy as np
    >>> out = with_intermediates(build_vit("Nano/4", 32, 10))(np.zeros((1, 32, 32, 3)))
    >>> len(out["attention"]), tuple(out["attention"][0].shape)
    (4, (1, 4, 65, 65))
    """
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
    if not blocks:
        raise ValueError(f"Model {model.name!r} has no TransformerBlock layers; build it with vitkeras.build_vit.")
    x = model.get_layer("patch_encoder").output  # (B, 1+N, D)
    tokens, attention = [], []
    for block in blocks:
        x, weights = _BlockWithAttention(block)(x)  # (B, T, D), (B, h, T, T)
        tokens.append(x)
        attention.append(weights)
    output = model.get_layer("encoder_norm")(x)
    for layer_name in ("cls_pool", "gap_pool", "pre_logits", "head"):
        if any(layer.name == layer_name for layer in model.layers):
            output = model.get_layer(layer_name)(output)
    return keras.Model(model.input, {"output": output, "tokens": tokens, "attention": attention})
