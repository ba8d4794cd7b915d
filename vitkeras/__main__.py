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


def _data_efficiency(args):
    from vitkeras import experiments

    summary = experiments.data_efficiency(
        dataset=args.dataset,
        sizes=args.sizes,
        epochs=args.epochs,
        seeds=args.seeds,
        model_kinds=args.models,
        vit_preset=args.preset,
        cnn_width=args.cnn_width,
        recipe=args.recipe,
        min_steps=args.min_steps,
        batch_size=args.batch_size,
        image_size=args.image_size,
        data_dir=args.data_dir,
        out=args.out,
        verbose=args.verbose,
        precision=args.precision,
    )
    print(experiments.summary_table(summary))
    print(f"wrote {args.out}/results.json and {args.out}/data_efficiency.png")
    return 0


def _train(args):
    from vitkeras import experiments

    experiments.train(
        model_kind=args.model,
        dataset=args.dataset,
        vit_preset=args.preset,
        epochs=args.epochs,
        recipe=args.recipe,
        image_size=args.image_size,
        data_dir=args.data_dir,
        out=args.out,
        seed=args.seed,
        verbose="auto" if args.verbose else 2,
        precision=args.precision,
    )
    return 0


def _finetune(args):
    from vitkeras import experiments

    experiments.finetune(
        checkpoint=args.checkpoint,
        dataset=args.dataset,
        image_size=args.image_size,
        linear_probe=args.linear_probe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        train_size=args.train_size,
        test_size=args.test_size,
        data_dir=args.data_dir,
        cache_dir=args.cache_dir,
        out=args.out,
        seed=args.seed,
        verbose="auto" if args.verbose else 2,
        precision=args.precision,
    )
    return 0


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line with exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _dataset_name(text):
    from vitkeras.data import DATASET_NAMES

    if text in DATASET_NAMES or (text.startswith("folder:") and len(text) > len("folder:")):
        return text
    raise argparse.ArgumentTypeError(f"unknown dataset {text!r}; use {', '.join(DATASET_NAMES)} or folder:PATH")


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


def make_parser():
    parser = _Parser(prog="python -m vitkeras", description="vitkeras: the Vision Transformer in Keras 3.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    presets = commands.add_parser("presets", help="build each paper preset and print its parameter count")
    presets.add_argument("--only", nargs="+", type=_preset_name, metavar="PRESET", help="presets to build, e.g. B/16")
    presets.add_argument("--image-size", type=_positive_int, default=224, help="input resolution (default 224)")
    presets.add_argument("--num-classes", type=_positive_int, default=1000, help="head outputs (default 1000)")
    presets.set_defaults(run=_presets)

    from vitkeras.experiments import DEFAULT_EPOCHS, DEFAULT_MIN_STEPS, DEFAULT_SIZES, MODELS

    efficiency = commands.add_parser(
        "data-efficiency",
        help="ViT vs CNN test accuracy as the training set grows (the course's main experiment)",
        description="Trains a ViT and a CNN of similar size with the same recipe on growing, stratified "
        "training subsets and evaluates both on one test set. Writes OUT/results.json (after every "
        "finished point; a rerun skips finished points) and OUT/data_efficiency.png.",
    )
    efficiency.add_argument("--dataset", type=_dataset_name, default="shapes",
                            help="shapes (default, offline), shapes-translation, cifar10, cifar100, cats_vs_dogs, folder:PATH")
    efficiency.add_argument("--sizes", type=_positive_int, nargs="+", default=list(DEFAULT_SIZES),
                            help=f"training examples per class (default {' '.join(map(str, DEFAULT_SIZES))})")
    efficiency.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                            help=f"epochs per run, the same for every model (default {DEFAULT_EPOCHS})")
    efficiency.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS,
                            help=f"at least this many steps per run, so small subsets converge (default {DEFAULT_MIN_STEPS})")
    efficiency.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default 0)")
    efficiency.add_argument("--models", nargs="+", choices=MODELS, default=["vit", "cnn"], help="models to compare")
    efficiency.add_argument("--preset", type=_preset_name, default="Nano/4", help="ViT preset (default Nano/4)")
    efficiency.add_argument("--cnn-width", type=_positive_int, default=None,
                            help="CNN width (default: matched to the ViT's parameter count)")
    efficiency.add_argument("--recipe", type=_recipe_name, default="scratch", help="training recipe (default scratch)")
    efficiency.add_argument("--batch-size", type=_positive_int, default=64, help="batch size (default 64)")
    efficiency.add_argument("--image-size", type=_positive_int, default=None, help="resize images to this size")
    efficiency.add_argument("--data-dir", default=None, help="tensorflow-datasets folder with a local copy")
    efficiency.add_argument("--out", default="runs/data_efficiency", help="output folder (default runs/data_efficiency)")
    efficiency.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0, help="Keras verbosity while training")
    efficiency.add_argument("--precision", choices=PRECISIONS, default="auto",
                            help="auto (float32 on CPU, mixed on GPU/TPU) or a Keras dtype policy")
    efficiency.set_defaults(run=_data_efficiency)

    train = commands.add_parser("train", help="train one model and report its test accuracy")
    train.add_argument("--model", choices=MODELS, default="vit", help="vit (default), cnn or hybrid")
    train.add_argument("--preset", type=_preset_name, default="Micro/4", help="ViT preset (default Micro/4)")
    train.add_argument("--dataset", type=_dataset_name, default="shapes", help="as for data-efficiency")
    train.add_argument("--epochs", type=_positive_int, default=10, help="epochs (default 10)")
    train.add_argument("--recipe", type=_recipe_name, default="scratch", help="scratch (default), finetune, keras_example")
    train.add_argument("--image-size", type=_positive_int, default=None, help="resize images to this size")
    train.add_argument("--data-dir", default=None, help="tensorflow-datasets folder with a local copy")
    train.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    train.add_argument("--out", default="runs/train", help="output folder; rerun to resume (default runs/train)")
    train.add_argument("--verbose", action="store_true", help="show a progress bar")
    train.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto (float32 on CPU, mixed on GPU/TPU) or a Keras dtype policy")
    train.set_defaults(run=_train)

    finetune = commands.add_parser(
        "finetune",
        help="fine-tune a pretrained ViT / DINOv2 checkpoint and report its test accuracy",
        description="Loads a Hugging Face checkpoint (directory or Hub id) into a vitkeras ViT, replaces its head "
        "with a zero-initialised one, fine-tunes it (SGD, momentum 0.9, cosine schedule) and writes "
        "OUT/result.json. Rerun to resume an interrupted run.",
    )
    finetune.add_argument("--checkpoint", required=True,
                          help="checkpoint directory or Hub id, e.g. google/vit-base-patch16-224-in21k, facebook/dinov2-small")
    finetune.add_argument("--dataset", type=_dataset_name, default="cats_vs_dogs", help="cats_vs_dogs (default), cifar10, folder:PATH, ...")
    finetune.add_argument("--linear-probe", action="store_true", help="train only the new head")
    finetune.add_argument("--image-size", type=_positive_int, default=None, help="resolution (default: the checkpoint's)")
    finetune.add_argument("--epochs", type=_positive_int, default=1, help="epochs (default 1)")
    finetune.add_argument("--batch-size", type=_positive_int, default=None, help="batch size (default 64)")
    finetune.add_argument("--learning-rate", type=_positive_float, default=None, help="peak learning rate (default 0.01)")
    finetune.add_argument("--train-size", type=_positive_int, default=None, help="use only this many training images")
    finetune.add_argument("--test-size", type=_positive_int, default=None, help="use only this many test images")
    finetune.add_argument("--data-dir", default=None, help="tensorflow-datasets folder with a local copy")
    finetune.add_argument("--cache-dir", default=None, help="Hugging Face download cache (default ~/.cache/huggingface)")
    finetune.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    finetune.add_argument("--out", default="runs/finetune", help="output folder; rerun to resume (default runs/finetune)")
    finetune.add_argument("--verbose", action="store_true", help="show a progress bar")
    finetune.add_argument("--precision", choices=PRECISIONS, default="auto",
                          help="auto (float32 on CPU, mixed on GPU/TPU) or a Keras dtype policy")
    finetune.set_defaults(run=_finetune)
    return parser


def main(argv=None):
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
