"""Looking inside a ViT: the paper's section 4.5 (Figures 6 and 7) as functions.

Every function works on any model from `build_vit`, `build_hybrid_vit` or
`load_pretrained`, with a class token or with GAP pooling, on any patch grid.
Attention comes from the model itself (`vitkeras.with_intermediates` calls the
same blocks with `return_attention_scores=True`): no hooks and no second
implementation of the forward pass.

- `attention_maps`: (L, B, h, T, T) attention weights of every layer and head.
- `attention_rollout` (Abnar and Zuidema, 2020) and `class_token_map`: where the
  class token's information comes from, as a patch-grid heat map (Figure 6).
- `mean_attention_distance`: per layer and head, the average image distance in
  pixels across which attention integrates information (Figure 7, right).
- `position_embedding_similarity`: cosine similarity of each learned position
  embedding with all others (Figure 7, centre); `position_embedding_locality`
  summarises it in one number.
- `embedding_filter_components`: principal components of the patch-embedding
  filters E, as images (Figure 7, left).
The `plot_*` functions return matplotlib figures (matplotlib loads only then).

Example:
>>> from vitkeras import build_vit
>>> model = build_vit("Nano/4", image_size=16, num_classes=2, seed=0)
>>> attention = attention_maps(model, np.zeros((1, 16, 16, 3)))
>>> attention.shape  # (L, B, h, T, T)
(4, 1, 4, 17, 17)
>>> mean_attention_distance(attention, grid_size=(4, 4), patch_pixels=4).shape  # (L, h)
(4, 4)
"""

import math

import keras
import numpy as np

from vitkeras.models import with_intermediates

HEAD_FUSIONS = ("mean", "max", "min")


# --------------------------------------------------------------------------- #
# What a model says about its own geometry
# --------------------------------------------------------------------------- #
def token_layout(model):
    """(grid_size, num_prefix_tokens, patch_pixels) of a vitkeras model.

    `patch_pixels` is the image height covered by one token (the patch size P,
    or the stem's stride for a hybrid), for distances in pixels.
    """
    encoder = model.get_layer("patch_encoder")
    rows, cols = encoder.grid_size
    height = model.input_shape[1]
    return (rows, cols), encoder.num_prefix_tokens, height / rows


# --------------------------------------------------------------------------- #
# Attention weights and rollout
# --------------------------------------------------------------------------- #
def attention_maps(model, images, batch_size=8):
    """Attention weights of every layer and head for a batch of images.

    Args:
        model: a vitkeras ViT (any head, or none).
        images: (B, H, W, C) array as the model takes them.
        batch_size: images per forward pass (attention of big models is large).

    Returns:
        float32 NumPy array (L, B, h, T, T); each row sums to 1.
    """
    inspector = with_intermediates(model)
    images = np.asarray(images)
    chunks = []
    for start in range(0, len(images), batch_size):
        out = inspector(images[start : start + batch_size], training=False)
        chunks.append(np.stack([keras.ops.convert_to_numpy(a) for a in out["attention"]]))  # (L, b, h, T, T)
    return np.concatenate(chunks, axis=1).astype("float32")  # (L, B, h, T, T)


def fuse_heads(attention, head_fusion="mean"):
    """(..., h, T, T) -> (..., T, T): the heads' mean, max or min."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {list(HEAD_FUSIONS)}, got {head_fusion!r}.")
    return getattr(np, head_fusion)(np.asarray(attention), axis=-3)


def attention_rollout(attention, head_fusion="mean", residual=True):
    """Attention rollout (Abnar and Zuidema, 2020): how much each input token flows into each output token.

    Per layer, the heads are fused, the residual connection is accounted for as
    0.5 * A + 0.5 * I (rows renormalised), and the layers are multiplied from
    the first to the last: R = A_L ... A_2 A_1.

    Args:
        attention: (L, B, h, T, T) from `attention_maps`.
        head_fusion: "mean" (the paper's), "max" or "min" over heads.
        residual: add the identity for the skip connections.

    Returns:
        (B, T, T) array; row t says where output token t's information comes from (rows sum to 1).

    Example:
    >>> eye = np.broadcast_to(np.eye(3), (2, 1, 1, 3, 3))  # (L, B, h, T, T)
    >>> np.allclose(attention_rollout(eye)[0], np.eye(3))
    True
    """
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 5 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"attention must be (L, B, h, T, T), got shape {attention.shape}.")
    layers = fuse_heads(attention, head_fusion)  # (L, B, T, T)
    tokens = attention.shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), layers.shape[1:]).copy()  # (B, T, T)
    for layer in layers:
        if residual:
            layer = 0.5 * layer + 0.5 * np.eye(tokens)
        layer = layer / layer.sum(axis=-1, keepdims=True)
        rollout = layer @ rollout  # (B, T, T)
    return rollout


def class_token_map(rollout, grid_size, num_prefix_tokens=1):
    """The rollout of the class token over the patch grid, scaled to a maximum of 1.

    Models without a class token (GAP pooling) use the mean over all patch tokens,
    which is what their head sees.

    Args:
        rollout: (B, T, T) from `attention_rollout`.
        grid_size: (rows, cols) of patches.
        num_prefix_tokens: 1 with a class token, 0 without.

    Returns:
        (B, rows, cols) array in [0, 1].
    """
    rows, cols = grid_size
    rollout = np.asarray(rollout)
    if rollout.shape[-1] != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"rollout has {rollout.shape[-1]} tokens; a {rows}x{cols} grid with {num_prefix_tokens} prefix token(s) "
            f"has {num_prefix_tokens + rows * cols}."
        )
    if num_prefix_tokens:
        weights = rollout[:, 0, num_prefix_tokens:]  # (B, N)
    else:
        weights = rollout.mean(axis=1)  # (B, N)
    weights = weights.reshape(-1, rows, cols)  # (B, rows, cols)
    return weights / np.maximum(weights.max(axis=(1, 2), keepdims=True), 1e-12)


# --------------------------------------------------------------------------- #
# Mean attention distance (Figure 7, right)
# --------------------------------------------------------------------------- #
def patch_distances(grid_size, patch_pixels=1.0):
    """(N, N) Euclidean distances between patch centres, in pixels."""
    rows, cols = grid_size
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.stack([r.ravel(), c.ravel()], axis=-1).astype(np.float64)  # (N, 2), row-major like Patches
    return patch_pixels * np.linalg.norm(centres[:, None] - centres[None], axis=-1)  # (N, N)


def mean_attention_distance(attention, grid_size, patch_pixels, num_prefix_tokens=1):
    """Average distance in pixels over which each head attends, per layer (paper Figure 7, right).

    For each query patch, the distances to all key patches are weighted by the
    attention between them; the class token is left out on both sides and the
    remaining weights renormalised. Averaged over query patches and images.

    Args:
        attention: (L, B, h, T, T) from `attention_maps`.
        grid_size: (rows, cols) of patches.
        patch_pixels: pixels per patch (P; for a hybrid, the stem's stride).
        num_prefix_tokens: 1 with a class token, 0 without.

    Returns:
        (L, h) array of distances in pixels.
    """
    attention = np.asarray(attention, dtype=np.float64)
    rows, cols = grid_size
    if attention.ndim != 5 or attention.shape[-1] != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"attention must be (L, B, h, T, T) with T = {num_prefix_tokens} + {rows}*{cols}, got shape {attention.shape}."
        )
    patches = attention[..., num_prefix_tokens:, num_prefix_tokens:]  # (L, B, h, N, N)
    patches = patches / np.maximum(patches.sum(axis=-1, keepdims=True), 1e-12)
    per_query = (patches * patch_distances(grid_size, patch_pixels)).sum(axis=-1)  # (L, B, h, N)
    return per_query.mean(axis=(1, 3))  # (L, h)


# --------------------------------------------------------------------------- #
# Position embeddings (Figure 7, centre) and filters (Figure 7, left)
# --------------------------------------------------------------------------- #
def position_embedding_similarity(model_or_embedding, grid_size=None, num_prefix_tokens=None):
    """Cosine similarity of each patch position's embedding with every other one.

    Args:
        model_or_embedding: a vitkeras model (its learned or sincos E_pos), or an
            array (prefix + rows*cols, D) (a leading 1 is allowed).
        grid_size, num_prefix_tokens: needed for an array; read from a model.

    Returns:
        (rows, cols, rows, cols) array: [i, j] is the similarity map of patch (i, j).

    Example:
    >>> from vitkeras.layers import sincos2d_position_embedding
    >>> sim = position_embedding_similarity(sincos2d_position_embedding((4, 4), 32), (4, 4), 0)
    >>> np.unravel_index(sim[1, 2].argmax(), (4, 4))
    (np.int64(1), np.int64(2))
    """
    if isinstance(model_or_embedding, keras.Model):
        encoder = model_or_embedding.get_layer("patch_encoder")
        if encoder.position_embedding == "none":
            raise ValueError(f"Model {model_or_embedding.name!r} has no position embeddings.")
        embedding = keras.ops.convert_to_numpy(encoder.position_embedding_weight)
        grid_size, num_prefix_tokens = encoder.grid_size, encoder.num_prefix_tokens
    else:
        embedding = np.asarray(model_or_embedding)
        if grid_size is None or num_prefix_tokens is None:
            raise ValueError("grid_size and num_prefix_tokens are needed with an embedding array.")
    embedding = np.asarray(embedding, dtype=np.float64).reshape(-1, np.shape(embedding)[-1])
    rows, cols = grid_size
    if embedding.shape[0] != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"Embedding has {embedding.shape[0]} rows; a {rows}x{cols} grid with {num_prefix_tokens} prefix "
            f"token(s) needs {num_prefix_tokens + rows * cols}."
        )
    grid = embedding[num_prefix_tokens:]  # (N, D)
    unit = grid / np.maximum(np.linalg.norm(grid, axis=-1, keepdims=True), 1e-12)
    return (unit @ unit.T).reshape(rows, cols, rows, cols)  # (rows, cols, rows, cols)


def position_embedding_locality(similarity):
    """Fraction of patch positions whose most similar *other* position is one of their 8 neighbours.

    A summary of Figure 7 (centre): 1.0 when the embeddings encode the 2D grid
    locally, about 8 / (N - 1) for embeddings that know nothing of it.

    Args:
        similarity: (rows, cols, rows, cols) from `position_embedding_similarity`.

    Example:
    >>> from vitkeras.layers import sincos2d_position_embedding
    >>> position_embedding_locality(position_embedding_similarity(sincos2d_position_embedding((6, 6), 64), (6, 6), 0))
    1.0
    """
    similarity = np.array(similarity, dtype=np.float64)
    rows, cols = similarity.shape[:2]
    hits = 0
    for i in range(rows):
        for j in range(cols):
            others = similarity[i, j].copy()
            others[i, j] = -np.inf  # itself: always 1
            r, c = np.unravel_index(others.argmax(), (rows, cols))
            hits += max(abs(int(r) - i), abs(int(c) - j)) == 1
    return hits / (rows * cols)


def embedding_filter_components(model_or_kernel, num_components=28, patch_size=None, channels=3):
    """Principal components of the patch-embedding filters E, as P x P x C images.

    Each of the D columns of E (the Dense kernel of shape (P*P*C, D)) is a filter
    applied to a patch. PCA over the D filters (centred) gives the basis the
    model uses to describe a patch's fine structure (paper Figure 7, left).

    Args:
        model_or_kernel: a vitkeras ViT, or a kernel array (P*P*C, D).
        num_components: how many components (at most min(D, P*P*C)).
        patch_size, channels: needed with a kernel array.

    Returns:
        (components (k, P, P, C), explained_variance_ratio (k,)).
    """
    if isinstance(model_or_kernel, keras.Model):
        kernel = keras.ops.convert_to_numpy(model_or_kernel.get_layer("patch_encoder").projection.kernel)
        patch_size = model_or_kernel.get_layer("patches").patch_size
        channels = kernel.shape[0] // (patch_size * patch_size)
    else:
        kernel = np.asarray(model_or_kernel)
        if patch_size is None:
            raise ValueError("patch_size is needed with a kernel array.")
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != patch_size * patch_size * channels:
        raise ValueError(f"kernel of shape {kernel.shape} is not (P*P*C, D) for P={patch_size}, C={channels}.")
    filters = kernel.T - kernel.T.mean(axis=0)  # (D, P*P*C), centred over filters
    _, singular, components = np.linalg.svd(filters, full_matrices=False)
    k = min(num_components, components.shape[0])
    variance = singular**2
    ratio = variance[:k] / max(variance.sum(), 1e-12)
    return components[:k].reshape(k, patch_size, patch_size, channels), ratio


# --------------------------------------------------------------------------- #
# Plots
# --------------------------------------------------------------------------- #
def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _to_rgb(image):
    image = np.asarray(image, dtype=np.float64)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def plot_attention_overlay(images, maps, titles=None, alpha=0.6):
    """Each image next to its attention map laid over it (paper Figure 6).

    Args:
        images: (B, H, W, C) images (any range; shown min-max scaled).
        maps: (B, rows, cols) from `class_token_map`; upsampled to the image.
        titles: optional list of B titles.
        alpha: opacity of the map.
    """
    plt = _pyplot()
    images, maps = np.asarray(images), np.asarray(maps)
    figure, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.6), squeeze=False)
    for i, (image, heat) in enumerate(zip(images, maps)):
        height, width = image.shape[:2]
        reps = (math.ceil(height / heat.shape[0]), math.ceil(width / heat.shape[1]))
        big = np.kron(heat, np.ones(reps))[:height, :width]  # nearest upsampling, patch by patch
        axes[0, i].imshow(_to_rgb(image))
        axes[1, i].imshow(_to_rgb(image))
        axes[1, i].imshow(big, cmap="inferno", alpha=alpha, vmin=0, vmax=1)
        axes[0, i].set_title(titles[i] if titles else f"image {i}", fontsize=9)
        for ax in axes[:, i]:
            ax.axis("off")
    axes[1, 0].set_title("attention rollout", fontsize=9, loc="left")
    figure.tight_layout()
    return figure


def plot_mean_attention_distance(distances, labels=None, image_size=None):
    """Mean attention distance per head against depth, one dot per head (paper Figure 7, right).

    Args:
        distances: (L, h) array, or a list of them to compare models side by side.
        labels: names of the models.
        image_size: draws the image size as a reference line.
    """
    plt = _pyplot()
    series = distances if isinstance(distances, (list, tuple)) else [distances]
    labels = labels or [None] * len(series)
    figure, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.4), squeeze=False, sharey=True)
    for ax, values, label in zip(axes[0], series, labels):
        values = np.asarray(values)
        depth = np.repeat(np.arange(1, values.shape[0] + 1), values.shape[1])
        ax.scatter(depth, values.ravel(), s=12, alpha=0.7)
        if image_size:
            ax.axhline(image_size, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("network depth (layer)")
        ax.set_title(label or "", fontsize=10)
    axes[0, 0].set_ylabel("mean attention distance (pixels)")
    figure.tight_layout()
    return figure


def plot_position_embedding_similarity(similarity, title="Position embedding similarity"):
    """One small similarity map per patch position, laid out on the patch grid (paper Figure 7, centre)."""
    plt = _pyplot()
    rows, cols = similarity.shape[:2]
    figure, axes = plt.subplots(rows, cols, figsize=(min(0.5 * cols + 1, 9), min(0.5 * rows + 1, 9)), squeeze=False)
    for i in range(rows):
        for j in range(cols):
            axes[i, j].imshow(similarity[i, j], cmap="viridis", vmin=-1, vmax=1)
            axes[i, j].axis("off")
    figure.suptitle(title, fontsize=10)
    return figure


def plot_embedding_filters(components, columns=7, title="Principal components of the embedding filters"):
    """The components from `embedding_filter_components`, each min-max scaled to an RGB image."""
    plt = _pyplot()
    count = len(components)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < count:
            image = components[k]
            ax.imshow(_to_rgb(image if image.shape[-1] == 3 else image[..., 0]), cmap=None if image.shape[-1] == 3 else "gray")
    figure.suptitle(title, fontsize=10)
    return figure
