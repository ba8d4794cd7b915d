"""The layers of the Vision Transformer, written with `keras.ops` only.

Three carry the paper's equations: `Patches`, `PatchEncoder` and
`TransformerBlock`; `TokenPooling` picks the class token (or averages the
patch tokens) for the head, and the helpers below resample and build
position embeddings.

Dosovitskiy et al., "An Image is Worth 16x16 Words" (2020), equations (1)-(3):

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos          (1)  Patches + PatchEncoder
    z'_l = MSA(LN(z_{l-1})) + z_{l-1}                        (2)  TransformerBlock
    z_l  = MLP(LN(z'_l)) + z'_l                              (3)  TransformerBlock

Letters used in shape comments: B batch, H W C image, P patch size, N number of
patches, D hidden width (the paper's "Hidden size"), h attention heads, d = D / h.

Every layer here runs unchanged on the TensorFlow, JAX and PyTorch backends,
creates its weights in `build()`, and saves to `.keras` without custom objects.
"""

from __future__ import annotations

import math
import zlib

import keras
import numpy as np
from keras import ops

__all__ = [
    "Patches",
    "PatchEncoder",
    "TransformerBlock",
    "TokenPooling",
    "PatchDropout",
    "unpatchify",
    "sincos2d_position_embedding",
    "seeded_initializer",
    "layer_seed",
    "resample_position_embedding",
]

POSITION_EMBEDDINGS = ("learned", "sincos2d", "none")
POOLINGS = ("cls", "gap")


# --------------------------------------------------------------------------- #
# Seeds: a seeded model seeds each of its initialisers, nothing global
# --------------------------------------------------------------------------- #
def layer_seed(seed, name):
    """A seed for the layer `name` of a model built with `seed` (None stays None).

    Derived from both, so every layer of a seeded model gets its own stream and
    building draws nothing from Python's, NumPy's or Keras' global generators.

    Example:
    >>> layer_seed(0, "stage0_block0_a") == layer_seed(0, "stage0_block0_a") != layer_seed(1, "stage0_block0_a")
    True
    """
    if seed is None:
        return None
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31 - 1)


def seeded_initializer(initializer, seed):
    """`initializer` with its own integer seed, or unchanged when `seed` is None or it draws no random numbers.

    Example:
    >>> seeded_initializer("glorot_uniform", 3).seed, seeded_initializer("zeros", 3).__class__.__name__
    (3, 'Zeros')
    """
    if seed is None:
        return keras.initializers.get(initializer)
    # Built from its config: making an unseeded Keras initializer first would draw its seed from Python's RNG.
    if isinstance(initializer, str):
        config = {"class_name": initializer, "config": {}}
    else:
        config = keras.initializers.serialize(keras.initializers.get(initializer))
    try:
        return keras.initializers.deserialize({**config, "config": {**config.get("config", {}), "seed": int(seed)}})
    except TypeError:  # an initializer without randomness (zeros, constant) takes no seed
        return keras.initializers.deserialize(config)


# --------------------------------------------------------------------------- #
# Argument checks shared by the layers (messages say what was given and what is allowed)
# --------------------------------------------------------------------------- #
def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _check_rate(name, value):
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1), got {value!r}.")
    return float(value)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
    return value


def _as_pair(name, value):
    """An int or a pair of ints -> a tuple (height, width)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"`{name}` must be a positive int or a pair (height, width) of them, got {value!r}.")
    return int(value[0]), int(value[1])


def check_image_shape(shape, patch_size, what="input"):
    """Checks a (B, H, W, C) image shape against a patch size; raises ValueError.

    Unknown (None) height and width are allowed here and checked when known.
    """
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"The {what} must be a batch of images of rank 4, (B, H, W, C) channels-last; "
            f"got rank {len(shape)} with shape {shape}."
        )
    _, height, width, channels = shape
    if (
        shape[1] in (1, 3)
        and height is not None
        and width is not None
        and channels is not None
        and width > 4
        and channels > 4
    ):
        raise ValueError(
            f"The {what} shape {shape} looks channels-first (B, C, H, W). vitkeras expects "
            f"channels-last images (B, H, W, C); transpose with `ops.transpose(x, (0, 2, 3, 1))`."
        )
    for name, size in (("height", height), ("width", width)):
        if size is not None and size % patch_size:
            raise ValueError(
                f"Image {name} {size} is not divisible by the patch size {patch_size}: the image "
                f"must be cut into whole P x P patches. Allowed {name}s for P={patch_size} are "
                f"multiples of {patch_size}, e.g. {max(1, size // patch_size) * patch_size} or "
                f"{(size // patch_size + 1) * patch_size}."
            )


# --------------------------------------------------------------------------- #
# Patches: (B, H, W, C) -> (B, N, P*P*C)
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="vitkeras")
class Patches(keras.layers.Layer):
    """Cuts images into non-overlapping P x P patches and flattens each one.

    A pure reshape and transpose, no convolution: patch n (row-major over the
    patch grid) holds its pixels in (row, column, channel) order, so
    `Patches(P)` followed by `Dense(D)` is exactly a `Conv2D(D, P, strides=P)`
    whose kernel is the Dense kernel reshaped to (P, P, C, D).

    Args:
        patch_size: P, the side of a square patch in pixels.

    Example:
    >>> import numpy as np
    >>> tuple(Patches(4)(np.zeros((2, 32, 32, 3))).shape)
    (2, 64, 48)
    """

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _check_positive_int("patch_size", patch_size)

    def build(self, input_shape):
        check_image_shape(input_shape, self.patch_size, what=f"input of {self.name}")
        self.built = True

    def call(self, images, training=None):
        images = ops.cast(images, self.compute_dtype)  # uint8 / float64 -> compute dtype
        P = self.patch_size
        static = images.shape
        dynamic = ops.shape(images)
        H = static[1] if static[1] is not None else dynamic[1]
        W = static[2] if static[2] is not None else dynamic[2]
        C = static[3] if static[3] is not None else dynamic[3]
        gh, gw = H // P, W // P
        x = ops.reshape(images, (-1, gh, P, gw, P, C))  # (B, H/P, P, W/P, P, C)
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, H/P, W/P, P, P, C)
        return ops.reshape(x, (-1, gh * gw, P * P * C))  # (B, N, P*P*C)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        P = self.patch_size
        num_patches = None if height is None or width is None else (height // P) * (width // P)
        patch_dim = None if channels is None else P * P * channels
        return (batch, num_patches, patch_dim)

    def unpatchify(self, patches, image_size):
        """Inverse of `call`: see `vitkeras.layers.unpatchify`."""
        return unpatchify(patches, image_size, self.patch_size)

    def get_config(self):
        config = super().get_config()
        config.update({"patch_size": self.patch_size})
        return config


def unpatchify(patches, image_size, patch_size):
    """Puts images back together from `Patches` output, exactly.

    Args:
        patches: (B, N, P*P*C) tensor, as returned by `Patches(patch_size)`.
        image_size: H, or (H, W), of the original images.
        patch_size: P.

    Returns:
        (B, H, W, C) tensor.

    Example:
    >>> import numpy as np
    >>> x = np.random.rand(1, 8, 12, 3).astype("float32")
    >>> bool(np.array_equal(unpatchify(Patches(4)(x), (8, 12), 4), x))
    True
    """
    H, W = _as_pair("image_size", image_size)
    P = _check_positive_int("patch_size", patch_size)
    if H % P or W % P:
        raise ValueError(f"image_size {(H, W)} is not divisible by the patch size {P}.")
    gh, gw = H // P, W // P
    N, patch_dim = patches.shape[1], patches.shape[2]
    if N is not None and N != gh * gw:
        raise ValueError(
            f"Got {N} patches, but an image of {H}x{W} with patch size {P} has {gh}x{gw}={gh * gw}."
        )
    if patch_dim is not None and patch_dim % (P * P):
        raise ValueError(f"Patch length {patch_dim} is not a multiple of P*P={P * P}.")
    C = patch_dim // (P * P)
    x = ops.reshape(patches, (-1, gh, gw, P, P, C))  # (B, H/P, W/P, P, P, C)
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, H/P, P, W/P, P, C)
    return ops.reshape(x, (-1, H, W, C))  # (B, H, W, C)


# --------------------------------------------------------------------------- #
# Position embeddings
# --------------------------------------------------------------------------- #
def sincos2d_position_embedding(grid_size, hidden_dim, temperature=10000.0):
    """Fixed 2D sine-cosine position embeddings (as in big_vision / MAE).

    A quarter of the D channels encode sin and cos of the column index, and a
    quarter each the row index, at D/4 geometrically spaced frequencies.

    Args:
        grid_size: (rows, columns) of the patch grid, or an int for a square one.
        hidden_dim: D, divisible by 4.
        temperature: the longest wavelength.

    Returns:
        float32 NumPy array of shape (rows * columns, D), row-major like `Patches`.

    Example:
    >>> sincos2d_position_embedding((2, 3), 8).shape
    (6, 8)
    """
    gh, gw = _as_pair("grid_size", grid_size)
    if hidden_dim % 4:
        raise ValueError(
            f"sincos2d position embeddings need a hidden_dim divisible by 4 "
            f"(sin and cos for rows and for columns), got hidden_dim={hidden_dim}."
        )
    quarter = hidden_dim // 4
    omega = np.arange(quarter, dtype=np.float64) / max(quarter - 1, 1)
    omega = 1.0 / temperature**omega  # (D/4,)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")  # (gh, gw) each
    y = rows.reshape(-1)[:, None] * omega[None, :]  # (N, D/4)
    x = cols.reshape(-1)[:, None] * omega[None, :]  # (N, D/4)
    embedding = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)  # (N, D)
    return embedding.astype("float32")


def _cubic_weights(t, a=-0.75):
    """Keys cubic convolution weights for the 4 taps around a fractional offset t."""
    def near(s):  # |s| <= 1
        return ((a + 2) * s - (a + 3)) * s * s + 1

    def far(s):  # 1 < |s| < 2
        return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _interpolation_matrix(source, target, method, scale=None):
    """(target, source) matrix M so that M @ signal resizes a 1D signal.

    Matches PyTorch's `F.interpolate(..., align_corners=False)` (half-pixel
    centres, a=-0.75 for bicubic, edge taps clamped), which the reference ViT and
    DINOv2 implementations use to resample position embeddings.
    """
    step = (1.0 / scale) if scale is not None else source / target
    matrix = np.zeros((target, source), dtype=np.float64)
    for i in range(target):
        centre = (i + 0.5) * step - 0.5
        if method == "bilinear":
            centre = max(centre, 0.0)
            left = min(int(np.floor(centre)), source - 1)
            t = centre - left
            matrix[i, left] += 1.0 - t
            matrix[i, min(left + 1, source - 1)] += t
        elif method == "bicubic":
            left = int(np.floor(centre))
            weights = _cubic_weights(centre - left)
            for k, w in zip(range(left - 1, left + 3), weights):
                matrix[i, min(max(k, 0), source - 1)] += w
        else:  # nearest, as torch's "nearest"
            matrix[i, min(int(np.floor(i * step)), source - 1)] = 1.0
    return matrix


def resample_position_embedding(
    embedding, source_grid, target_grid, num_prefix_tokens=1, method="bicubic", scale=None
):
    """Resizes learned position embeddings to another patch grid.

    The grid part (the last rows*columns rows) is interpolated in 2D; prefix
    tokens (the class token's position) are kept as they are. Fine-tuning at a
    resolution other than pre-training needs this (paper, section 3.2).

    Args:
        embedding: array (num_prefix_tokens + rows*columns, D), or with a leading 1.
        source_grid: (rows, columns) the embedding was trained on (int: square).
        target_grid: (rows, columns) wanted.
        num_prefix_tokens: rows before the grid part (1 with a class token).
        method: "bicubic" (default, as the reference implementations), "bilinear" or "nearest".
        scale: optional (row, column) scale factors, for references that pass a
            scale factor instead of a size to the interpolation.

    Returns:
        float32 NumPy array (num_prefix_tokens + target rows*columns, D).

    Example:
    >>> resample_position_embedding(np.zeros((1 + 14 * 14, 8)), 14, 16).shape
    (257, 8)
    """
    _check_choice("method", method, ("bicubic", "bilinear", "nearest"))
    source_grid = _as_pair("source_grid", source_grid)
    target_grid = _as_pair("target_grid", target_grid)
    array = np.asarray(keras.ops.convert_to_numpy(embedding), dtype=np.float64)
    squeeze = array.ndim == 3
    if squeeze:
        array = array[0]
    expected = num_prefix_tokens + source_grid[0] * source_grid[1]
    if array.ndim != 2 or array.shape[0] != expected:
        raise ValueError(
            f"Position embedding of shape {array.shape} does not match a {source_grid[0]}x"
            f"{source_grid[1]} grid with {num_prefix_tokens} prefix token(s) (want {expected} rows)."
        )
    prefix, grid = array[:num_prefix_tokens], array[num_prefix_tokens:]
    grid = grid.reshape(source_grid[0], source_grid[1], -1)  # (rows, cols, D)
    scales = (None, None) if scale is None else scale
    rows = _interpolation_matrix(source_grid[0], target_grid[0], method, scales[0])
    cols = _interpolation_matrix(source_grid[1], target_grid[1], method, scales[1])
    grid = np.einsum("ir,jc,rcd->ijd", rows, cols, grid)  # (target rows, target cols, D)
    result = np.concatenate([prefix, grid.reshape(-1, array.shape[1])], axis=0).astype("float32")
    return result[None] if squeeze else result


# --------------------------------------------------------------------------- #
# PatchEncoder: (B, N, P*P*C) -> (B, 1+N, D), equation (1)
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="vitkeras")
class PatchEncoder(keras.layers.Layer):
    """The patch embedding of equation (1): z_0 = [x_class; x_p E] + E_pos.

    Projects each flattened patch to D with the linear map E (a Dense layer),
    prepends the learnable [class] token, adds position embeddings E_pos of
    shape (N+1, D) and applies dropout.

    Args:
        hidden_dim: D.
        class_token: prepend a learnable [class] token.
        position_embedding: "learned" (the paper), "sincos2d" (fixed 2D sine-cosine,
            nothing to learn) or "none" (the paper's "no positional embedding" ablation).
        dropout: dropout rate after adding the position embeddings.
        grid_size: (rows, columns) of the patch grid. Needed for "sincos2d" and for
            resampling; if None, N must be a square and the grid is sqrt(N) x sqrt(N).
        kernel_initializer: initializer of E.
        seed: seed of the dropout and of the initializers.

    Example:
    >>> import numpy as np
    >>> tuple(PatchEncoder(32)(np.zeros((2, 64, 48))).shape)
    (2, 65, 32)
    """

    def __init__(
        self,
        hidden_dim,
        class_token=True,
        position_embedding="learned",
        dropout=0.0,
        grid_size=None,
        kernel_initializer="lecun_normal",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden_dim = _check_positive_int("hidden_dim", hidden_dim)
        self.class_token = bool(class_token)
        self.position_embedding = _check_choice("position_embedding", position_embedding, POSITION_EMBEDDINGS)
        self.dropout = _check_rate("dropout", dropout)
        self.grid_size = None if grid_size is None else _as_pair("grid_size", grid_size)
        # Resolved in build(), seeded there when the layer has a seed (a name is kept as given).
        self.kernel_initializer = (
            kernel_initializer if isinstance(kernel_initializer, str) else keras.initializers.get(kernel_initializer)
        )
        self.seed = seed
        if self.position_embedding == "sincos2d" and self.hidden_dim % 4:
            raise ValueError(
                f"position_embedding='sincos2d' needs hidden_dim divisible by 4, got hidden_dim={hidden_dim}."
            )

    @property
    def num_prefix_tokens(self):
        return int(self.class_token)

    def _resolve_grid(self, num_patches):
        if self.grid_size is not None:
            if num_patches is not None and self.grid_size[0] * self.grid_size[1] != num_patches:
                raise ValueError(
                    f"{self.name}: grid_size {self.grid_size} has {self.grid_size[0] * self.grid_size[1]} "
                    f"patches but the input has N={num_patches}."
                )
            return self.grid_size
        if num_patches is None:
            raise ValueError(f"{self.name}: the number of patches N must be known (got None).")
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"{self.name}: N={num_patches} patches is not a square grid; pass grid_size=(rows, columns)."
            )
        return (side, side)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(
                f"{self.name} expects flattened patches (B, N, P*P*C) of rank 3, got shape {tuple(input_shape)}."
            )
        self.grid_size = self._resolve_grid(input_shape[1])
        num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.projection = keras.layers.Dense(
            self.hidden_dim,
            kernel_initializer=seeded_initializer(self.kernel_initializer, layer_seed(self.seed, "projection")),
            dtype=self.dtype_policy,
            name="projection",
        )
        self.projection.build(input_shape)
        if self.class_token:
            self.class_embedding = self.add_weight(
                shape=(1, 1, self.hidden_dim), initializer="zeros", name="class_token"
            )
        if self.position_embedding == "learned":
            self.position_embedding_weight = self.add_weight(
                shape=(1, num_tokens, self.hidden_dim),
                initializer=keras.initializers.TruncatedNormal(stddev=0.02, seed=self.seed),
                name="position_embedding",
            )
        elif self.position_embedding == "sincos2d":
            table = sincos2d_position_embedding(self.grid_size, self.hidden_dim)
            table = np.concatenate([np.zeros((self.num_prefix_tokens, self.hidden_dim), "float32"), table])
            self.position_embedding_weight = self.add_weight(
                shape=(1, num_tokens, self.hidden_dim),
                initializer=keras.initializers.Constant(table[None]),
                trainable=False,
                name="position_embedding",
            )
        self.dropout_layer = keras.layers.Dropout(self.dropout, seed=self.seed, dtype=self.dtype_policy, name="dropout")
        self.built = True

    def call(self, patches, training=None):
        patches = ops.cast(patches, self.compute_dtype)
        N = ops.shape(patches)[1]
        rows = ops.reshape(patches, (-1, ops.shape(patches)[2]))  # (B*N, P*P*C): rows, as in TransformerBlock
        x = ops.reshape(self.projection(rows), (-1, N, self.hidden_dim))  # (B, N, D)
        if self.class_token:
            cls = ops.cast(self.class_embedding, x.dtype)  # (1, 1, D)
            cls = ops.broadcast_to(cls, (ops.shape(x)[0], 1, self.hidden_dim))  # (B, 1, D)
            x = ops.concatenate([cls, x], axis=1)  # (B, 1+N, D)
        if self.position_embedding != "none":
            x = x + ops.cast(self.position_embedding_weight, x.dtype)  # (B, 1+N, D)
        return self.dropout_layer(x, training=training)

    def compute_output_shape(self, input_shape):
        num_patches = input_shape[1]
        num_tokens = None if num_patches is None else num_patches + self.num_prefix_tokens
        return (input_shape[0], num_tokens, self.hidden_dim)

    def set_position_embedding(self, embedding, source_grid=None, method="bicubic", scale=None):
        """Assigns learned position embeddings, resampling them to this layer's grid.

        Args:
            embedding: (prefix + rows*columns, D) array, e.g. from a model trained at another resolution.
            source_grid: the grid `embedding` was trained on; None means this layer's grid.
            method, scale: see `resample_position_embedding`.
        """
        if self.position_embedding != "learned":
            raise ValueError(
                f"{self.name} has position_embedding={self.position_embedding!r}; only 'learned' ones can be set."
            )
        if not self.built:
            raise ValueError(f"{self.name} must be built (called once) before its position embeddings are set.")
        value = resample_position_embedding(
            embedding, source_grid or self.grid_size, self.grid_size, self.num_prefix_tokens, method, scale
        )
        self.position_embedding_weight.assign(value[None])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "class_token": self.class_token,
                "position_embedding": self.position_embedding,
                "dropout": self.dropout,
                "grid_size": None if self.grid_size is None else list(self.grid_size),
                "kernel_initializer": self.kernel_initializer if isinstance(self.kernel_initializer, str)
                else keras.initializers.serialize(self.kernel_initializer),
                "seed": self.seed,
            }
        )
        return config


# --------------------------------------------------------------------------- #
# PatchDropout: (B, P+N, D) -> (B, P+K, D) in training, identity at inference
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="vitkeras")
class PatchDropout(keras.layers.Layer):
    """Keeps a random subset of each image's patch tokens in training (PatchDropout, Liu et al. 2023).

    A Transformer block costs about linearly in its tokens at these sizes, so keeping
    K = round((1 - rate) * N) of the N patch tokens makes a training step nearly
    N / K times cheaper, and the missing tokens act as augmentation (a random cutout
    per image). Each image draws its own subset; prefix tokens (the [class] token)
    are always kept. At inference every token passes. Place it after the position
    embeddings are added, so each kept token still carries where it came from.

    Args:
        rate: fraction of the patch tokens dropped in training, in [0, 1).
        num_prefix_tokens: tokens before the patch tokens (1 with a class token), never dropped.
        seed: seed of the draws.

    Example:
    >>> import numpy as np
    >>> layer = PatchDropout(0.5, num_prefix_tokens=1, seed=0)
    >>> tokens = np.arange(2 * 65 * 4, dtype="float32").reshape(2, 65, 4)
    >>> tuple(layer(tokens, training=True).shape), tuple(layer(tokens).shape)
    ((2, 33, 4), (2, 65, 4))
    """

    def __init__(self, rate, num_prefix_tokens=0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = _check_rate("rate", rate)
        if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, (int, np.integer)) \
                or num_prefix_tokens < 0:
            raise ValueError(f"`num_prefix_tokens` must be a non-negative integer, got {num_prefix_tokens!r}.")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        tokens = input_shape[1] if len(input_shape) == 3 else None
        if len(input_shape) != 3 or (tokens is not None and tokens <= self.num_prefix_tokens):
            raise ValueError(
                f"{self.name} expects tokens (B, T, D) with more than num_prefix_tokens={self.num_prefix_tokens} "
                f"tokens, got shape {tuple(input_shape)}."
            )
        self.built = True

    def num_kept(self, num_patches):
        """K: how many of `num_patches` patch tokens a training step keeps (at least 1)."""
        return max(1, round(num_patches * (1.0 - self.rate)))

    def call(self, tokens, training=None):
        if not training or self.rate == 0.0:
            return tokens
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens :]  # (B, P, D), (B, N, D)
        num_patches = patches.shape[1]
        if num_patches is None:
            raise ValueError(f"{self.name}: the number of patch tokens must be known when tracing, got shape "
                             f"{tuple(tokens.shape)}.")
        keep = self.num_kept(num_patches)
        noise = keras.random.uniform(ops.shape(patches)[:2], seed=self.seed_generator)  # (B, N)
        _, kept = ops.top_k(noise, keep, sorted=False)  # (B, K): a uniform random K-subset per image
        index = ops.broadcast_to(ops.expand_dims(kept, -1), (ops.shape(patches)[0], keep, ops.shape(patches)[2]))
        patches = ops.take_along_axis(patches, index, axis=1)  # (B, K, D)
        return ops.concatenate([prefix, patches], axis=1)  # (B, P+K, D)

    def compute_output_shape(self, input_shape):
        # The token count depends on `training` (P+K in training, P+N at inference): unknown here.
        return (input_shape[0], None if self.rate else input_shape[1], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "num_prefix_tokens": self.num_prefix_tokens, "seed": self.seed})
        return config


# --------------------------------------------------------------------------- #
# TransformerBlock: (B, T, D) -> (B, T, D), equations (2) and (3)
# --------------------------------------------------------------------------- #
def _device_kind():
    """"cpu", "gpu", "cuda", "tpu", ...: the kind of Keras's first device (its name before the colon)."""
    return keras.distribution.list_devices()[0].split(":")[0].lower()


def _fused_attention_available(dtype):
    """Whether `ops.dot_product_attention` can run for this dtype here.

    JAX's CPU backend has no float16 matmul with float32 accumulation, which its
    fused attention asks for; everything else (GPUs included) takes the fused path.
    """
    if keras.config.backend() != "jax" or dtype != "float16":
        return True
    return _device_kind() != "cpu"


# cuDNN's fused attention kernel on JAX: half precision only, and token counts it accepts.
FUSED_ATTENTION_DTYPES = ("float16", "bfloat16")
FUSED_ATTENTION_TOKEN_MULTIPLE = 64


def _flash_attention_choice(dtype, num_tokens):
    """The `flash_attention` argument of `ops.dot_product_attention` for this block.

    On JAX, Keras's own check accepts shapes that cuDNN then rejects while the
    training step is traced (ViT-B/16 at 224 px: 197 tokens, "Unsupported sequence
    length Q 197, KV 197"); Keras logs an ERROR traceback for every block and falls
    back to XLA's attention. So on JAX the block chooses itself, and never makes the
    failing attempt: the fused kernel only on a GPU, in float16 or bfloat16, for a
    token count that is a multiple of 64; XLA's attention otherwise. Other backends
    choose for themselves (None).

    Example:
    >>> _flash_attention_choice("float32", 197) in (None, False)
    True
    """
    if keras.config.backend() != "jax":
        return None
    return bool(_device_kind() in ("gpu", "cuda") and dtype in FUSED_ATTENTION_DTYPES and num_tokens is not None
                and num_tokens % FUSED_ATTENTION_TOKEN_MULTIPLE == 0)


def _float32_if_mixed(policy):
    """LayerNorm and softmax stay in float32 under a mixed precision policy."""
    if policy.compute_dtype in ("float16", "bfloat16"):
        return "float32"
    return policy


@keras.saving.register_keras_serializable(package="vitkeras")
class TransformerBlock(keras.layers.Layer):
    """One pre-LayerNorm Transformer encoder block, equations (2) and (3).

        z' = z + DropPath(gamma_1 * MSA(LN(z)))
        out = z' + DropPath(gamma_2 * MLP(LN(z')))

    MSA has h heads of size d = D/h (so its cost does not grow with h), and
    MLP is Dense(mlp_dim, GELU) -> Dense(D). gamma (LayerScale) and DropPath are
    off by default and used by DeiT-III / DINOv2-style models.

    Args:
        num_heads: h; must divide the input width D.
        mlp_dim: width of the MLP's hidden layer (the paper's "MLP size").
        dropout: dropout after each Dense of the MLP and after the attention output.
        attention_dropout: dropout on the attention weights.
        layer_scale: None, or the initial value of a learnable per-channel scale
            on each residual branch (1e-5 in DeiT-III; DINOv2 checkpoints load theirs).
        drop_path: probability of dropping a residual branch per sample (stochastic depth).
        layer_norm_epsilon: epsilon of both LayerNorms (1e-6 as big_vision).
        seed: seed for dropout and drop-path.

    Call arguments:
        x: (B, T, D) tokens.
        training: bool.
        return_attention_scores: also return the attention weights (B, h, T, T).

    Example:
    >>> import numpy as np
    >>> tuple(TransformerBlock(num_heads=4, mlp_dim=64)(np.zeros((2, 17, 32))).shape)
    (2, 17, 32)
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout=0.0,
        attention_dropout=0.0,
        layer_scale=None,
        drop_path=0.0,
        layer_norm_epsilon=1e-6,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = _check_positive_int("num_heads", num_heads)
        self.mlp_dim = _check_positive_int("mlp_dim", mlp_dim)
        self.dropout = _check_rate("dropout", dropout)
        self.attention_dropout = _check_rate("attention_dropout", attention_dropout)
        if layer_scale is not None and (not isinstance(layer_scale, (int, float)) or layer_scale <= 0):
            raise ValueError(f"`layer_scale` must be None or a positive float, got {layer_scale!r}.")
        self.layer_scale = None if layer_scale is None else float(layer_scale)
        self.drop_path = _check_rate("drop_path", drop_path)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.seed = seed

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{self.name} expects tokens (B, T, D) with known D, got shape {tuple(input_shape)}.")
        D = input_shape[-1]
        if D % self.num_heads:
            raise ValueError(
                f"hidden_dim D={D} is not divisible by num_heads={self.num_heads}: each head gets D/num_heads "
                f"channels. Allowed num_heads for D={D}: {[h for h in range(1, min(D, 64) + 1) if D % h == 0]}."
            )
        self.hidden_dim = D
        self.head_dim = D // self.num_heads
        # call() flattens tokens to (B*T, D) rows, which would silently regroup tokens of another width:
        # Keras checks every later input against the width the block was built for.
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: D})
        policy = self.dtype_policy
        norm_policy = _float32_if_mixed(policy)
        def dense(units, name):  # Glorot-uniform kernels, each with its own seed when the block has one
            initializer = seeded_initializer("glorot_uniform", layer_seed(self.seed, name))
            return keras.layers.Dense(units, kernel_initializer=initializer, dtype=policy, name=name)

        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=norm_policy, name="norm1")
        self.query = dense(D, "query")
        self.key = dense(D, "key")
        self.value = dense(D, "value")
        self.attention_output = dense(D, "attention_output")
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=norm_policy, name="norm2")
        self.mlp_hidden = dense(self.mlp_dim, "mlp_hidden")
        self.mlp_output = dense(D, "mlp_output")
        rows = (None, D)  # the block computes on its tokens as rows of a (B*T, D) matrix, see call()
        for layer in (self.norm1, self.query, self.key, self.value, self.attention_output, self.norm2):
            layer.build(rows)
        self.mlp_hidden.build(rows)
        self.mlp_output.build((None, self.mlp_dim))
        seed = self.seed
        self.attention_dropout_layer = keras.layers.Dropout(self.attention_dropout, seed=seed, dtype=policy)
        self.dropout_layer = keras.layers.Dropout(self.dropout, seed=None if seed is None else seed + 1, dtype=policy)
        if self.layer_scale is not None:
            init = keras.initializers.Constant(self.layer_scale)
            self.attention_scale = self.add_weight(shape=(D,), initializer=init, name="attention_scale")
            self.mlp_scale = self.add_weight(shape=(D,), initializer=init, name="mlp_scale")
        self.drop_path_seed = keras.random.SeedGenerator(None if seed is None else seed + 2)
        self.built = True

    # -- pieces of equations (2) and (3) ------------------------------------ #
    # They work on the block's tokens as the rows of one (B*T, D) matrix: LayerNorm and every Dense act
    # on each token alone, so this is the same computation as on (B, T, D). It is faster on XLA's CPU
    # backend: with (B, T, D) tensors, XLA fed each weight gradient through a transposed copy that
    # recomputed the LayerNorm backward, element by element (a third of a ViT-S/16 training step on JAX;
    # benchmarks/RESULTS.md, "Where a JAX training step's time goes").
    @staticmethod
    def layer_norm(norm, rows):
        """LN(z) of (B*T, D) rows by `norm` (norm1 or norm2), computed and returned in its float32.

        Under mixed precision the residual stream is bfloat16/float16 and the norms are float32 layers.
        Keras's LayerNormalization computes in float32 but returns its input's dtype, so a 16-bit input
        came back rounded to 16 bits and was cast to float32 again, and once more to 16 bits for the
        Dense layers: two casts of the whole stream per norm (and two in the backward pass) for nothing.
        Given float32 rows, it returns true float32, which the Dense layers round once.
        """
        return norm(ops.cast(rows, norm.compute_dtype))  # (B*T, D)

    def _split_heads(self, rows, num_tokens):
        return ops.reshape(rows, (-1, num_tokens, self.num_heads, self.head_dim))  # (B, T, h, d)

    def self_attention(self, rows, num_tokens, training=None, return_attention_scores=False):
        """MSA for normalised tokens as (B*T, D) rows: (B*T, D) rows out, optionally the (B, h, T, T) weights."""
        q = self._split_heads(self.query(rows), num_tokens)  # (B, T, h, d)
        k = self._split_heads(self.key(rows), num_tokens)  # (B, T, h, d)
        v = self._split_heads(self.value(rows), num_tokens)  # (B, T, h, d)
        explicit = (
            return_attention_scores
            or (training and self.attention_dropout > 0)
            or not _fused_attention_available(self.compute_dtype)
        )
        if explicit:
            scale = 1.0 / math.sqrt(self.head_dim)
            logits = ops.einsum("bqhd,bkhd->bhqk", q, k)  # (B, h, T, T)
            weights = ops.softmax(ops.cast(logits, "float32") * scale, axis=-1)  # float32 softmax
            dropped = self.attention_dropout_layer(ops.cast(weights, v.dtype), training=training)
            context = ops.einsum("bhqk,bkhd->bqhd", dropped, v)  # (B, T, h, d)
        else:  # the backend's fused kernel (cuDNN / flash on GPU); softmax accumulates in float32
            flash = _flash_attention_choice(self.compute_dtype, q.shape[1])
            context = ops.dot_product_attention(q, k, v, flash_attention=flash)  # (B, T, h, d)
        out = self.attention_output(ops.reshape(context, (-1, self.hidden_dim)))  # (B*T, D)
        return (out, weights) if return_attention_scores else out

    def mlp(self, rows, training=None):
        """MLP: Dense -> GELU -> dropout -> Dense -> dropout, (B*T, D) rows -> (B*T, D) rows."""
        x = ops.gelu(self.mlp_hidden(rows), approximate=False)  # (B*T, mlp_dim)
        x = self.dropout_layer(x, training=training)
        return self.mlp_output(x)  # (B*T, D)

    def _residual_branch(self, branch, scale, num_tokens, training):
        branch = self.dropout_layer(branch, training=training)
        if scale is not None:
            branch = branch * ops.cast(scale, branch.dtype)
        if training and self.drop_path > 0:  # one keep-or-drop draw per image, for all its T rows
            keep = 1.0 - self.drop_path
            tokens = ops.reshape(branch, (-1, num_tokens, self.hidden_dim))  # (B, T, D)
            mask = keras.random.uniform((ops.shape(tokens)[0], 1, 1), seed=self.drop_path_seed)  # (B, 1, 1)
            mask = ops.cast(mask < keep, branch.dtype) / ops.cast(keep, branch.dtype)
            branch = ops.reshape(tokens * mask, (-1, self.hidden_dim))  # (B*T, D)
        return branch

    def call(self, x, training=None, return_attention_scores=False):
        x = ops.cast(x, self.compute_dtype)
        T = ops.shape(x)[1]
        z = ops.reshape(x, (-1, self.hidden_dim))  # (B*T, D)
        attention = self.self_attention(
            self.layer_norm(self.norm1, z), T, training=training, return_attention_scores=return_attention_scores
        )
        if return_attention_scores:
            attention, weights = attention
        scale1 = self.attention_scale if self.layer_scale is not None else None
        scale2 = self.mlp_scale if self.layer_scale is not None else None
        z = z + self._residual_branch(ops.cast(attention, z.dtype), scale1, T, training)  # (2)  (B*T, D)
        mlp = self.mlp(self.layer_norm(self.norm2, z), training=training)
        z = z + self._residual_branch(ops.cast(mlp, z.dtype), scale2, T, training)  # (3)  (B*T, D)
        out = ops.reshape(z, (-1, T, self.hidden_dim))  # (B, T, D)
        return (out, weights) if return_attention_scores else out

    def compute_output_shape(self, input_shape, return_attention_scores=False):
        if return_attention_scores:
            batch, tokens = input_shape[0], input_shape[1]
            return tuple(input_shape), (batch, self.num_heads, tokens, tokens)
        return tuple(input_shape)

    def compute_output_spec(self, x, training=None, return_attention_scores=False):
        out = keras.KerasTensor(x.shape, dtype=self.compute_dtype)
        if return_attention_scores:
            weights = keras.KerasTensor((x.shape[0], self.num_heads, x.shape[1], x.shape[1]), dtype="float32")
            return out, weights
        return out

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout": self.dropout,
                "attention_dropout": self.attention_dropout,
                "layer_scale": self.layer_scale,
                "drop_path": self.drop_path,
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "seed": self.seed,
            }
        )
        return config


# --------------------------------------------------------------------------- #
# TokenPooling: (B, T, D) -> (B, D)
# --------------------------------------------------------------------------- #
@keras.saving.register_keras_serializable(package="vitkeras")
class TokenPooling(keras.layers.Layer):
    """The image representation y fed to the head: the class token or the mean of the patch tokens.

    Args:
        mode: "cls" takes token 0 (the [class] token, paper eq. (4));
            "gap" averages the patch tokens (global average pooling, paper appendix D.3).
        num_prefix_tokens: tokens before the patch tokens (1 with a class token),
            skipped by "gap".

    Example:
    >>> import numpy as np
    >>> tuple(TokenPooling("gap", num_prefix_tokens=0)(np.ones((2, 16, 8))).shape)
    (2, 8)
    """

    def __init__(self, mode="cls", num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        self.mode = _check_choice("mode", mode, POOLINGS)
        self.num_prefix_tokens = int(num_prefix_tokens)
        if self.mode == "cls" and self.num_prefix_tokens < 1:
            raise ValueError("TokenPooling('cls') needs a class token (num_prefix_tokens >= 1), got 0.")

    def call(self, tokens, training=None):
        if self.mode == "cls":
            return tokens[:, 0]  # (B, D)
        return ops.mean(tokens[:, self.num_prefix_tokens :], axis=1)  # (B, D)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "num_prefix_tokens": self.num_prefix_tokens})
        return config
