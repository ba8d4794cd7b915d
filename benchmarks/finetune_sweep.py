"""The fine-tuning sweep that chose the default recipe (issue: act 3 on real weights).

Fine-tunes a real pretrained checkpoint on real photos with each recipe, at
training-set sizes a course can afford, and records test accuracy and seconds:
the linear probe, LP-FT (the default), one-stage AdamW with a faster head,
layer-wise decay, and the paper's SGD at a course batch size.

Data: the cat and dog classes of the CIFAR-10 JPEG copy (a folder dataset made of
symbolic links; `--classes` picks others, `--classes all` keeps the 10), upscaled
to `--image-size`. Checkpoint: DINOv2 ViT-S/14 in Hugging Face format (on the
project's machines: `bash ../shared/tools/real-checkpoint/make.sh`).

    python benchmarks/finetune_sweep.py --checkpoint /tmp/real-checkpoints/dinov2-s14 \\
        --cifar-dir /tmp/data/cifar10 --runs choose
    python benchmarks/finetune_sweep.py ... --runs sizes

Every run writes OUT/<run>/result.json (a finished run is skipped on a rerun);
the table of all runs goes to OUT/summary.json and is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkeras import experiments  # noqa: E402

# (run name, FinetuneConfig options). "choose": every candidate at 500 images per class;
# "sizes": the linear probe, the default and the paper's SGD at smaller and larger sizes.
RUN_SETS = {
    "choose": [
        ("linear_probe", dict(linear_probe=True)),
        ("lp_ft_lr1e-5", dict(recipe="lp_ft", learning_rate=1e-5)),
        ("lp_ft_lr2e-5", dict(recipe="lp_ft")),
        ("lp_ft_lr5e-5", dict(recipe="lp_ft", learning_rate=5e-5)),
        ("adamw_head", dict(recipe="adamw_head")),
        ("llrd", dict(recipe="llrd")),
        ("paper_sgd_b32", dict(recipe="paper_sgd", batch_size=32)),
    ],
    "sizes": [
        ("linear_probe", dict(linear_probe=True)),
        ("lp_ft", dict(recipe="lp_ft")),
        ("paper_sgd_b32", dict(recipe="paper_sgd", batch_size=32)),
    ],
}


def class_folder(cifar_dir, classes, root):
    """A folder dataset with only `classes` of the CIFAR-10 copy, as symbolic links (nothing is copied)."""
    root = Path(root)
    for split in ("train", "test"):
        for name in classes:
            link = root / split / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(Path(cifar_dir).resolve() / split / name, link)
    return f"folder:{root}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cifar-dir", required=True, help="the unpacked CIFAR-10 JPEG copy (train/ and test/)")
    parser.add_argument("--classes", nargs="+", default=["cat", "dog"], help="classes to keep, or 'all'")
    parser.add_argument("--runs", choices=sorted(RUN_SETS), default="choose")
    parser.add_argument("--per-class", type=int, nargs="+", default=[500], help="training images per class")
    parser.add_argument("--test-size", type=int, default=None, help="stratified test subset (default: all)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--only", nargs="+", default=None, help="run names to run (default: the whole set)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of the subset, head and shuffling")
    parser.add_argument("--out", default="runs/finetune_sweep")
    args = parser.parse_args(argv)

    classes = sorted(os.listdir(Path(args.cifar_dir) / "train")) if args.classes == ["all"] else args.classes
    dataset = class_folder(args.cifar_dir, classes, Path(args.out) / ("data_" + "_".join(classes)))
    summary_path = Path(args.out) / "summary.json"
    rows = json.loads(summary_path.read_text()) if summary_path.exists() else []
    for seed, per_class in [(seed, n) for seed in args.seeds for n in args.per_class]:
        for name, options in RUN_SETS[args.runs]:
            if args.only and name not in args.only:
                continue
            run = f"{len(classes)}cls_{per_class}pc_{name}_e{args.epochs}" + (f"_s{seed}" if seed else "")
            out = Path(args.out) / run
            if (out / "result.json").exists():
                result = json.loads((out / "result.json").read_text())
            else:
                result = experiments.finetune(
                    checkpoint=args.checkpoint, dataset=dataset, image_size=args.image_size, epochs=args.epochs,
                    train_size=per_class * len(classes), test_size=args.test_size, out=str(out), seed=seed, **options,
                )
            row = {
                "run": run, "classes": len(classes), "per_class": per_class, "name": name, "seed": seed,
                "recipe": result["recipe"], "linear_probe": result["linear_probe"],
                "learning_rate": result.get("learning_rate", result["recipe_details"]["learning_rate"]),
                "batch_size": result["batch_size"], "epochs": result["epochs"],
                "test_accuracy": result["test_accuracy"], "test_size": result["test_size"],
                "seconds": result["seconds"], "seconds_per_epoch": result["seconds_per_epoch"],
                "probe_seconds": (result["probe"] or {}).get("seconds"),
                "image_size": result["image_size"], "machine": result["machine"],
                # LP-FT's held-out check (None for other recipes and older results).
                "selection": result.get("selection"),
                "validation_size": result["config"].get("validation_size"),
            }
            rows = [r for r in rows if r["run"] != run] + [row]
            summary_path.parent.mkdir(parents=True, exist_ok=True)
            summary_path.write_text(json.dumps(rows, indent=2))
            print(f"{run:<40} test accuracy {row['test_accuracy']:.4f}  ({row['seconds']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
