"""The vitkeras command line: `python -m vitkeras COMMAND --help`."""

from __future__ import annotations

import argparse
import sys


def _presets(args):
    """Builds each preset at 224x224 with a 1000-class head and prints its size next to the paper's."""
    import vitkeras
    from vitkeras.models import PAPER_PARAMS_M

    names = args.only or list(vitkeras.PRESETS)
    print(f"{'preset':<8} {'P':>3} {'D':>5} {'L':>3} {'h':>3} {'MLP':>5} {'tokens':>6} {'parameters':>13} {'paper':>7}")
    for name in names:
        config = vitkeras.get_config(name)
        model = vitkeras.build_vit(config, image_size=args.image_size, num_classes=args.num_classes)
        params = model.count_params()
        variant = name.split("/")[0]
        paper = f"{PAPER_PARAMS_M[variant]}M" if variant in PAPER_PARAMS_M else "-"
        tokens = (args.image_size // config.patch_size) ** 2 + 1
        print(
            f"{name:<8} {config.patch_size:>3} {config.hidden_dim:>5} {config.num_layers:>3} {config.num_heads:>3} "
            f"{config.mlp_dim:>5} {tokens:>6} {params:>13,} {paper:>7}"
        )
        del model
    print(f"(image {args.image_size}x{args.image_size}, {args.num_classes}-class head; paper: Table 1 of Dosovitskiy et al.)")
    return 0


def _config_from_args(config_class, args):
    """The experiment's config from the parsed arguments (the fields are the options)."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if f.metadata.get("cli") is not False}
    return config_class(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _data_efficiency(args):
    from vitkeras import experiments

    config = _config_from_args(experiments.DataEfficiencyConfig, args)
    summary = experiments.data_efficiency(config)
    print(experiments.summary_table(summary))
    print(f"wrote {config.out}/results.json and {config.out}/data_efficiency.png")
    return 0


def _shuffled_patches(args):
    from vitkeras import experiments

    config = _config_from_args(experiments.ShuffledPatchesConfig, args)
    summaries = experiments.shuffled_patches(config)
    print(experiments.shuffled_table(summaries))
    print(f"wrote {config.out}/original, {config.out}/shuffled and {config.out}/shuffled_patches.png")
    return 0


def _train(args):
    from vitkeras import experiments

    experiments.train(_config_from_args(experiments.TrainConfig, args))
    return 0


def _finetune(args):
    from vitkeras import experiments

    experiments.finetune(_config_from_args(experiments.FinetuneConfig, args))
    return 0


def _number(kind, zero_allowed=False):
    """An argparse type: a number of `kind` (int or float) above 0, or at least 0 with `zero_allowed`."""
    if zero_allowed:
        what = "a whole number >= 0" if kind is int else "a number >= 0"
    else:
        what = "a positive integer" if kind is int else "a positive number"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < 0 or (value == 0 and not zero_allowed) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int, _positive_float = _number(int), _number(float)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line with exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _dataset_name(text):
    from vitkeras.data import DATASET_NAMES, split_classes

    try:
        base, _ = split_classes(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if base in DATASET_NAMES or (base.startswith("folder:") and len(base) > len("folder:")):
        return text
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}; use {', '.join(DATASET_NAMES)} or folder:PATH, optionally with [class,class,...]"
    )


def _recipe_name(text):
    from vitkeras.training import RECIPES

    if text not in RECIPES:
        raise argparse.ArgumentTypeError(f"unknown recipe {text!r}; known: {', '.join(RECIPES)}")
    return text


def _preset_name(text):
    import vitkeras

    try:
        vitkeras.get_config(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


# Parsers for fields whose values need checking beyond their Python type.
_FIELD_TYPES = {"dataset": _dataset_name, "preset": _preset_name, "recipe": _recipe_name}


def _add_config_arguments(parser, config_class):
    """One command-line option per config field: --field-name, its help and default from the field."""
    import dataclasses

    for field in dataclasses.fields(config_class):
        meta = field.metadata
        if meta.get("cli") is False:
            continue
        flag = meta.get("flag", "--" + field.name.replace("_", "-"))
        default = field.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{meta['help']} (default: {shown})"
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action="store_true", help=meta["help"])
            continue
        kind = meta.get("type")
        if field.name in _FIELD_TYPES and "choices" not in meta:
            kind = _FIELD_TYPES[field.name]
        elif kind in (int, float) and not meta.get("signed"):
            kind = _number(kind, zero_allowed=meta.get("zero_allowed", False))
        parser.add_argument(
            flag, dest=field.name, type=kind, nargs=meta.get("nargs"), choices=meta.get("choices"),
            default=list(default) if isinstance(default, tuple) else default, help=help_text,
            required=meta.get("required", False),
        )


def make_parser():
    parser = _Parser(prog="python -m vitkeras", description="vitkeras: the Vision Transformer in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = commands.add_parser("presets", help="build each paper preset and print its parameter count")
    presets.add_argument("--only", nargs="+", type=_preset_name, metavar="PRESET", help="presets to build, e.g. B/16")
    presets.add_argument("--image-size", type=_positive_int, default=224, help="input resolution (default 224)")
    presets.add_argument("--num-classes", type=_positive_int, default=1000, help="head outputs (default 1000)")
    presets.set_defaults(run=_presets)
    presets.epilog = "example: python -m vitkeras presets --only Ti/16 B/16"

    from vitkeras import experiments

    efficiency = commands.add_parser(
        "data-efficiency",
        help="ViT vs CNN test accuracy as the training set grows (the course's main experiment)",
        description="Trains a ViT and a CNN of similar size with the same recipe (the CNN at its own learning "
        "rate) on growing, stratified "
        "training subsets, each until its accuracy on a held-out validation split stops improving (best "
        "weights restored), and tests all on one test set; with --models ... pretrained --checkpoint DIR it "
        "also fine-tunes a pretrained ViT on the same subsets. Prints progress (run, step, time left) and "
        "writes OUT/results.json (training, validation and test accuracy of every run, after every finished "
        "run; a rerun skips finished runs) and OUT/data_efficiency.png.",
        epilog="example: python -m vitkeras data-efficiency --sizes 100 300 --seeds 0 1",
    )
    _add_config_arguments(efficiency, experiments.DataEfficiencyConfig)
    efficiency.set_defaults(run=_data_efficiency)

    shuffled = commands.add_parser(
        "shuffled-patches",
        help="the inductive-bias experiment: ViT, ViT without position embeddings and CNN on original and "
        "patch-shuffled images",
        description="Shuffles every image's patches with one fixed random permutation (the same for every "
        "image, train and test) and runs the data-efficiency experiment on the original and the shuffled "
        "images. A ViT with learned position embeddings only sees renamed positions; a ViT without them is "
        "exactly invariant; a CNN loses its locality prior. Writes OUT/original, OUT/shuffled (each resumable) "
        "and OUT/shuffled_patches.png.",
        epilog="example: python -m vitkeras shuffled-patches --sizes 25 250 --seeds 0 1",
    )
    _add_config_arguments(shuffled, experiments.ShuffledPatchesConfig)
    shuffled.set_defaults(run=_shuffled_patches)

    train = commands.add_parser(
        "train", help="train one model and report its test accuracy",
        epilog="example: python -m vitkeras train --model cnn --epochs 2",
    )
    _add_config_arguments(train, experiments.TrainConfig)
    train.set_defaults(run=_train)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained ViT / DINOv2 checkpoint and report its test accuracy",
        description="Loads a Hugging Face checkpoint (directory or Hub id) into a vitkeras ViT, replaces its head "
        "with a zero-initialised one and fine-tunes it with a recipe (default lp_ft: a linear probe of the new "
        "head on frozen features, then all weights with AdamW at a small learning rate). Writes "
        "OUT/result.json and OUT/model.keras. Rerun to resume an interrupted run.",
        epilog="example: python -m vitkeras finetune --checkpoint facebook/dinov2-small --dataset cats_vs_dogs "
        "--image-size 112 --train-size 1000",
    )
    _add_config_arguments(finetune, experiments.FinetuneConfig)
    finetune.set_defaults(run=_finetune)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # TensorFlow's native start-up lines are noise for the course; --verbose shows them (see vitkeras.quiet).
    from vitkeras.quiet import native_logs_filtered

    with native_logs_filtered(enabled="--verbose" not in argv):
        args = make_parser().parse_args(argv)
        try:
            return args.run(args)
        except KeyboardInterrupt:
            print("interrupted; finished results are kept in the output folder (rerun to continue)", file=sys.stderr)
            return 130
        except (ValueError, RuntimeError, OSError) as error:
            print(f"python -m vitkeras {args.command}: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
