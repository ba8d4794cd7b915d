"""One seed of the main job's six runs with its convergence protocol changed: evaluation interval, patience, XLA, rates.

A probe for making the main job faster (issue 13, item 2), not a course result: it trains the
default data-efficiency points (shapes, Pico/4 ViT vs the matched CNN, 100/300/1,000 per class)
with `experiments.train_to_convergence` as the main job does, but lets the evaluation interval
(`--eval-every`, the main job's is 50 steps), the patience, which models compile with XLA
(`--jit`, default here "vit"; the main job compiles none with XLA on TensorFlow), the two learning rates and the batch vary, and prints
each run's validation-accuracy history, steps and seconds.

Usage (TensorFlow; about 6 minutes on 2 cores):

    python benchmarks/convergence_protocol.py --eval-every 25 --out benchmarks/results/convergence_protocol_eval25.json
"""
import sys, time, json, argparse
import numpy as np, keras
from vitkeras import experiments as ex, data as vdata, training
p = argparse.ArgumentParser()
p.add_argument("--eval-every", type=int, default=50)
p.add_argument("--patience", type=int, default=10)
p.add_argument("--jit", default="vit")
p.add_argument("--vit-lr", type=float, default=1e-3)
p.add_argument("--cnn-lr", type=float, default=3e-3)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--kinds", default="vit,cnn")
p.add_argument("--sizes", default="100,300,1000")
p.add_argument("--out", default=None)
a = p.parse_args()
T0 = time.perf_counter()
config = ex.DataEfficiencyConfig()
train_all, test = ex._efficiency_data(config)
width, params = ex._efficiency_models(config, 16, 6)
validation, rest = ex._validation_split(train_all, 50, a.seed)
print("data", round(time.perf_counter() - T0, 1), "s", flush=True)
compiled = {}; rows = []
for per_class in map(int, a.sizes.split(",")):
    chosen = vdata.stratified_subset(rest.labels, per_class, seed=a.seed)
    subset = rest.take(chosen)
    for kind in a.kinds.split(","):
        t0 = time.perf_counter()
        model = ex.build_model(kind, 16, 6, "Pico/4", width, seed=a.seed, cnn_stem_stride=2)
        recipe = ex.scratch_recipe("scratch").replace(learning_rate=a.vit_lr if kind != "cnn" else a.cnn_lr)
        if kind in compiled:
            compiled[kind].set_weights(model.get_weights()); model = compiled[kind]
        else:
            training.compile_model(model, recipe.replace(schedule="constant", warmup_fraction=0.0), 20000,
                                   jit_compile=kind in a.jit.split(","))
            ex.evaluate(model, vdata.make_pipeline(validation, 256, 6))
        compiled[kind] = model
        run = ex.train_to_convergence(model, subset, validation, recipe, batch_size=a.batch, seed=a.seed,
                                      patience=a.patience, eval_every=a.eval_every)
        acc = lambda d: ex.evaluate(model, vdata.make_pipeline(d, 256, 6))
        row = dict(kind=kind, n=len(subset), train=round(acc(subset), 3), val=round(run["validation_accuracy"], 3),
                   test=round(acc(test), 3), steps=run["steps"], best=run["best_step"], sec=run["seconds"],
                   total=round(time.perf_counter() - t0, 1),
                   hist=[round(v, 3) for v in run["history"]["val_accuracy"]],
                   lr=sorted(set(round(float(v), 6) for v in run["history"].get("learning_rate", []))))
        rows.append(row)
        print({k: v for k, v in row.items() if k != "hist"}, flush=True)
        print("   hist", row["hist"], flush=True)
print("TOTAL", round(time.perf_counter() - T0, 1), "s")
if a.out: json.dump(dict(args=vars(a), rows=rows), open(a.out, "w"), indent=1)
