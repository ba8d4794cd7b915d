"""The model of the keras.io example "Image classification with Vision Transformer", as a reference.

Revision reproduced: the original one, dated 2021-01-18 (keras-io commit
ef4cd45, written for the Keras 2 bundled with TensorFlow and the AdamW of
TensorFlow Addons; this module re-creates it in Keras 3), whose model width is
64 and whose 4 attention heads are each as wide as the model (`key_dim=64`).
A later Keras 3 revision (keras-io commit 0772130) widens the model to
4 x 64 = 256 with heads of 64 and an MLP of [512, 256]; everything said about
"the Keras example" in this project means the 2021-01-18 revision.

Written here from that revision, with its layer layout, so that
notebook 02 and the benchmarks can compare vitkeras against it on the same
backend (its layers are registered, so it saves and reloads, unlike the
example's own):

- in-model augmentation: Normalization (adapted), Resizing to 72, RandomFlip,
  RandomRotation(0.02), RandomZoom(0.2);
- patches with `keras.ops.image.extract_patches` (6x6 -> 144 patches);
- a Dense(64) projection plus an Embedding(144, 64) of positions, no class token;
- 8 blocks of LayerNorm -> MultiHeadAttention(4 heads, key_dim=64: every head as
  wide as the model) -> Add -> LayerNorm -> MLP [128, 64] -> Add;
- LayerNorm -> Flatten -> Dropout(0.5) -> MLP [2048, 1024] -> Dense(K): the
  head holds most of the parameters.

Trained with AdamW(1e-3, weight decay 1e-4) on every weight (vitkeras's
"keras_example" recipe).

Example:
>>> model = build_keras_example_vit(input_size=32, num_classes=10)
>>> model.count_params(), round(head_parameter_share(model), 3)
(21666762, 0.969)
"""

import keras
from keras import layers, ops

IMAGE_SIZE = 72
PATCH_SIZE = 6
PROJECTION_DIM = 64
NUM_HEADS = 4
TRANSFORMER_LAYERS = 8
HEAD_UNITS = [2048, 1024]


@keras.saving.register_keras_serializable(package="vitkeras_keras_example")
class ExamplePatches(layers.Layer):
    """The example's patch extraction: `keras.ops.image.extract_patches`, (B, H, W, C) -> (B, N, P*P*C)."""

    def __init__(self, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = patch_size

    def call(self, images):
        patches = ops.image.extract_patches(images, size=self.patch_size)  # (B, H/P, W/P, P*P*C)
        shape = ops.shape(patches)
        return ops.reshape(patches, (shape[0], shape[1] * shape[2], shape[3]))  # (B, N, P*P*C)

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size}


@keras.saving.register_keras_serializable(package="vitkeras_keras_example")
class ExamplePatchEncoder(layers.Layer):
    """The example's encoder: Dense projection plus an Embedding of positions; no class token."""

    def __init__(self, num_patches, projection_dim, **kwargs):
        super().__init__(**kwargs)
        self.num_patches = num_patches
        self.projection_dim = projection_dim

    def build(self, input_shape):
        self.projection = layers.Dense(self.projection_dim, name="projection")
        self.projection.build(input_shape)
        self.position_embedding = layers.Embedding(self.num_patches, self.projection_dim, name="position_embedding")
        self.position_embedding.build((1, self.num_patches))
        self.built = True

    def call(self, patches):
        positions = ops.expand_dims(ops.arange(0, self.num_patches), axis=0)  # (1, N)
        return self.projection(patches) + self.position_embedding(positions)  # (B, N, D)

    def get_config(self):
        return {**super().get_config(), "num_patches": self.num_patches, "projection_dim": self.projection_dim}


def _mlp(x, units, dropout):
    for width in units:
        x = layers.Dense(width, activation=keras.activations.gelu)(x)
        x = layers.Dropout(dropout)(x)
    return x


def build_keras_example_vit(
    input_size=32, num_classes=10, normalization=None, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
    projection_dim=PROJECTION_DIM, num_heads=NUM_HEADS, transformer_layers=TRANSFORMER_LAYERS,
    head_units=HEAD_UNITS, augment=True, key_dim=None, mlp_dim=None,
):
    """The example's model, or its layer layout at another configuration.

    Args:
        input_size, num_classes: image side and K.
        normalization: an adapted keras.layers.Normalization (None: skipped).
        image_size: the side images are resized to inside the model (72 in the example).
        patch_size, projection_dim, num_heads, transformer_layers: P, D, h, L.
        head_units: the MLP after Flatten ([2048, 1024] in the example; [] for Flatten -> Dense(K)).
        augment: the example's in-model augmentation.
        key_dim: width of each head (None: D, as the example; D // h is the paper's).
        mlp_dim: hidden width of the blocks' MLP (None: 2 * D, as the example).
    """
    inputs = keras.Input((input_size, input_size, 3))
    x = inputs
    if augment:
        if normalization is not None:
            x = normalization(x)
        x = layers.Resizing(image_size, image_size)(x)
        x = layers.RandomFlip("horizontal")(x)
        x = layers.RandomRotation(factor=0.02)(x)
        x = layers.RandomZoom(height_factor=0.2, width_factor=0.2)(x)
    elif image_size != input_size:
        x = layers.Resizing(image_size, image_size)(x)
    num_patches = (image_size // patch_size) ** 2
    x = ExamplePatches(patch_size)(x)
    x = ExamplePatchEncoder(num_patches, projection_dim)(x)
    for _ in range(transformer_layers):
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim or projection_dim, dropout=0.1)(y, y)
        x2 = layers.Add()([y, x])
        y = layers.LayerNormalization(epsilon=1e-6)(x2)
        y = _mlp(y, [mlp_dim or projection_dim * 2, projection_dim], dropout=0.1)
        x = layers.Add()([y, x2])
    x = layers.LayerNormalization(epsilon=1e-6)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.5)(x)
    x = _mlp(x, head_units, dropout=0.5)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name="keras_example_vit")


def head_parameter_share(model):
    """Fraction of the parameters after the Flatten layer (the example's MLP head).

    Flattening (N, D) tokens makes the first head layer N*D*2048 weights wide:
    with 144 tokens of 64, that one Dense layer alone has 18.9M parameters.
    """
    names = [layer.name for layer in model.layers]
    flatten = next((i for i, layer in enumerate(model.layers) if isinstance(layer, layers.Flatten)), None)
    if flatten is None:
        raise ValueError(f"Model {model.name!r} has no Flatten layer (layers: {names[:5]}...).")
    head = sum(layer.count_params() for layer in model.layers[flatten + 1 :])
    return head / model.count_params()
