"""Tables and figures of the phantom seed-study reproduction (docs/experiments.md) from the studies that
tools/run_tune_experiments.sh ran: WORK/studies/NAME (one `cxr tune --grid` study each), WORK/ensemble and
WORK/pruning/summary.json. Writes IMG/experiments_*.png and WORK/experiments.md (the tables, to paste), and prints
them. Synthetic (phantom) results; research use only."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NOTE = "phantom (synthetic) data - not clinical performance"


def load(work: Path, name: str):
    import optuna

    if not (work / "studies" / name / "study.db").is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'studies' / name / 'study.db'}")
    rows = []
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        seconds = t.user_attrs.get("wall_s") or (t.duration.total_seconds() if t.duration else float("nan"))
        rows.append({**t.params, "value": t.value, "seconds": seconds, "number": t.number,
                     "bundle": str(work / "studies" / name / t.user_attrs["bundle"])})
    return rows


def table(rows, keys) -> str:
    head = "| " + " | ".join(keys) + " | val mean AUROC | trial s |\n|" + "---|" * (len(keys) + 2) + "\n"
    body = "".join("| " + " | ".join(str(r[k]) for k in keys) + f" | {r['value']:.3f} | {r['seconds']:.0f} |\n"
                   for r in sorted(rows, key=lambda r: [str(r[k]) for k in keys]))
    return head + body


def bar(ax, labels, values, title, ylabel="best-epoch val mean AUROC"):
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    lo = min(values)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(values) + 0.03))
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=8)
    for i, v in enumerate(values):
        ax.text(i, v + 0.003, f"{v:.3f}", ha="center", fontsize=7)


def test_auroc(bundle: str, cache: Path) -> dict:
    from cxrkit.evaluation.evaluate import evaluate

    m = evaluate(bundle, cache, split="test", n_boot=500, seed=0, heatmaps=False, localisation=False, progress=False)
    return {"mean_auroc": m["mean_auroc"], "ci": [m["mean_auroc_ci_low"], m["mean_auroc_ci_high"]]}


def tied_keys(work: Path, img: Path, md: list, results: dict) -> None:
    """Batch size x accumulation at a fixed effective batch (studies accum, accum_seeds) and the loss-weighting
    strength (loss_weight): tables and one figure, experiments_tied_keys.png."""
    accum = load(work, "accum") + [{**r, "lr": 3e-3} for r in load(work, "accum_seeds")]
    weight = sorted(load(work, "loss_weight"), key=lambda r: r["pos_weight_power"])
    if not accum and not weight:
        return
    results["accum"], results["loss_weight"] = accum, weight
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.8))
    sizes = sorted({r["batch_size"] for r in accum})
    for lr, colour in ((1e-3, "#4c72b0"), (3e-3, "#c44e52")):
        pts = [(sizes.index(r["batch_size"]), r["value"]) for r in accum if r["lr"] == lr]
        if pts:
            a1.plot(*zip(*pts), "o", color=colour, alpha=0.8, label=f"lr {lr:g}")
            means = [sum(v for i, v in pts if i == k) / max(1, sum(i == k for i, _ in pts)) for k in range(len(sizes))]
            a1.plot(range(len(sizes)), means, "-", color=colour, alpha=0.6)
    a1.set_xticks(range(len(sizes)), [f"{b} x {64 // b}" for b in sizes])
    a1.set_xlabel("micro-batch x accumulation steps (effective batch 64)", fontsize=8)
    a1.set_ylabel("best-epoch val mean AUROC", fontsize=8)
    a1.set_title("Same effective batch, other micro-batch", fontsize=10)
    a1.legend(fontsize=8)
    secs = [[r["seconds"] for r in accum if r["batch_size"] == b] for b in sizes]
    a2.bar(range(len(sizes)), [sorted(x)[len(x) // 2] for x in secs], color="#4c72b0")
    a2.set_xticks(range(len(sizes)), [f"{b} x {64 // b}" for b in sizes])
    a2.set_ylabel("trial wall seconds (median)", fontsize=8)
    a2.set_title("Cost of small micro-batches on 2 CPU cores", fontsize=10)
    if weight:
        bar(a3, [f"power {r['pos_weight_power']:g}" for r in weight], [r["value"] for r in weight],
            "Loss weighting (neg/pos) ** power")
    fig.suptitle(f"Tied keys, cxr_tiny 64 px, 4 epochs, 1,200 images ({NOTE})", fontsize=10)
    fig.tight_layout()
    fig.savefig(img / "experiments_tied_keys.png", dpi=110)
    plt.close(fig)
    if accum:
        md.append("### Batch size x accumulation at effective batch 64\n\n"
                  + table([{**r, "accum_steps": 64 // r["batch_size"], "seed": r.get("seed", 0)} for r in accum],
                          ["batch_size", "accum_steps", "lr", "seed"]))
    if weight:
        md.append("### Loss weighting strength\n\n" + table(weight, ["pos_weight_power"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--img", type=Path, default=Path("docs/img"))
    ap.add_argument("--only-tied", action="store_true", help="only the tied-key studies (accum*, loss_weight)")
    args = ap.parse_args(argv)
    work, img = args.work, args.img
    img.mkdir(parents=True, exist_ok=True)
    md, results = [], {}
    if args.only_tied:
        tied_keys(work, img, md, results)
        (work / "experiments_tied.json").write_text(json.dumps(results, indent=2, default=str))
        print("\n".join(md))
        return 0

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    # optimiser x lr
    rows = load(work, "optimizer")
    results["optimizer"] = rows
    ax = axes[0, 0]
    opts = ["adam", "adamw", "sgd", "rmsprop"]
    lrs = sorted({r["lr"] for r in rows})
    for j, lr in enumerate(lrs):
        vals = [next((r["value"] for r in rows if r["optimizer"] == o and r["lr"] == lr), float("nan")) for o in opts]
        ax.bar([i + 0.38 * j for i in range(len(opts))], vals, width=0.38, label=f"lr {lr:g}")
    ax.set_xticks([i + 0.19 for i in range(len(opts))], opts)
    ax.set_ylim(0.4, 0.8)
    ax.legend(fontsize=7)
    ax.set_title("Optimiser x learning rate", fontsize=10)
    ax.set_ylabel("best-epoch val mean AUROC", fontsize=8)
    md.append("### Optimiser x learning rate\n\n" + table(rows, ["optimizer", "lr"]))

    # batch x lr heat map
    rows = load(work, "batch_lr")
    results["batch_lr"] = rows
    ax = axes[0, 1]
    bs = sorted({r["batch_size"] for r in rows})
    lrs = sorted({r["lr"] for r in rows})
    grid = [[next((r["value"] for r in rows if r["batch_size"] == b and r["lr"] == lr), float("nan")) for lr in lrs]
            for b in bs]
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(lrs)), [f"{x:g}" for x in lrs])
    ax.set_yticks(range(len(bs)), [str(b) for b in bs])
    ax.set_xlabel("lr", fontsize=8)
    ax.set_ylabel("batch size", fontsize=8)
    for i in range(len(bs)):
        for j in range(len(lrs)):
            ax.text(j, i, f"{grid[i][j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Batch size x learning rate", fontsize=10)
    pivot = "| batch \\ lr | " + " | ".join(f"{x:g}" for x in lrs) + " |\n|---|" + "---|" * len(lrs) + "\n"
    pivot += "".join(f"| {b} | " + " | ".join(f"{v:.3f}" for v in row) + " |\n" for b, row in zip(bs, grid))
    md.append("### Batch size x learning rate (val mean AUROC)\n\n" + pivot)

    # image size
    rows = sorted(load(work, "image_size"), key=lambda r: r["image_size"])
    results["image_size"] = rows
    ax = axes[0, 2]
    ax.plot([r["image_size"] for r in rows], [r["value"] for r in rows], "o-")
    ax2 = ax.twinx()
    ax2.plot([r["image_size"] for r in rows], [r["seconds"] for r in rows], "s--", color="#c44e52")
    ax2.set_ylabel("trial seconds", fontsize=8, color="#c44e52")
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["image_size"] for r in rows], [str(r["image_size"]) for r in rows])
    ax.set_title("Image size (cache 128 px)", fontsize=10)
    ax.set_ylabel("best-epoch val mean AUROC", fontsize=8)
    md.append("### Image size\n\n" + table(rows, ["image_size"]))

    # grey vs RGB, attention vs none: mean of two seeds
    for ax, name, key, labels in ((axes[1, 0], "channels", "input_channels", {1: "grey (1 ch)", 3: "RGB (3 ch)"}),
                                  (axes[1, 1], "head", "head", {"linear": "linear", "attention": "attention"})):
        rows = load(work, name)
        results[name] = rows
        keys = list(labels)
        means = [sum(r["value"] for r in rows if r[key] == k) / max(1, sum(r[key] == k for r in rows)) for k in keys]
        bar(ax, [labels[k] for k in keys], means, f"{name}: mean of seeds 0, 1")
        for i, k in enumerate(keys):
            ax.plot([i] * sum(r[key] == k for r in rows), [r["value"] for r in rows if r[key] == k], "k.")
        md.append(f"### {name}\n\n" + table(rows, [key, "seed"]))

    # architectures
    rows = load(work, "arch")
    results["arch"] = rows
    order = sorted(rows, key=lambda r: -r["value"])
    bar(axes[1, 2], [f"{r['arch']}\n{r['seconds']:.0f} s" for r in order], [r["value"] for r in order],
        "Architectures (64 px, 4 epochs)")
    md.append("### Architectures\n\n" + table(rows, ["arch"]))
    fig.suptitle(f"Seed study on phantoms: cxr_tiny unless varied, 64 px, 4 epochs, 1,200 images ({NOTE})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(img / "experiments_seed_study.png", dpi=110)
    plt.close(fig)

    # ensemble of the best three architectures vs the best single, on the test split
    cache = work / "c128"
    best = order[0]
    single = test_auroc(best["bundle"], cache)
    ens = test_auroc(str(work / "ensemble"), cache)
    results["ensemble"] = {"best_single": {"arch": best["arch"], **single},
                           "ensemble_top3": {"members": [r["arch"] for r in order[:3]], **ens}}
    md.append("### Ensemble of the best three architectures (test split, 95 % bootstrap CI)\n\n"
              "| model | test mean AUROC [95 % CI] |\n|---|---|\n"
              f"| best single ({best['arch']}) | {single['mean_auroc']:.3f} [{single['ci'][0]:.3f}, "
              f"{single['ci'][1]:.3f}] |\n"
              f"| mean ensemble of {', '.join(r['arch'] for r in order[:3])} | {ens['mean_auroc']:.3f} "
              f"[{ens['ci'][0]:.3f}, {ens['ci'][1]:.3f}] |\n")

    rows = load(work, "real_head_lr")
    if rows:
        results["real_head_lr"] = rows
        md.append("### The 421 real NIH films (cxr_tiny, 64 px, 4 epochs; val split of ~60 films)\n\n"
                  + table(rows, ["head", "lr"]))

    tied_keys(work, img, md, results)

    bench = work / "pruning" / "summary.json"
    if bench.is_file():
        s = json.loads(bench.read_text())["results"]
        results["pruning"] = s
        arms = list(s)
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
        a1.bar(arms, [s[a]["trial_epochs"] for a in arms], color="#4c72b0")
        a1.set_ylabel("trial-epochs trained")
        a1b = a1.twinx()
        a1b.plot(arms, [s[a]["cpu_s"] for a in arms], "o", color="#c44e52")
        a1b.set_ylabel("CPU seconds", color="#c44e52")
        a1.set_title("Compute (same number of trials)", fontsize=10)
        vals = [s[a]["val_mean_auroc"] for a in arms]
        err = [[v - s[a]["val_ci"][0] for a, v in zip(arms, vals)], [s[a]["val_ci"][1] - v for a, v in zip(arms, vals)]]
        a2.errorbar(arms, vals, yerr=err, fmt="o", capsize=4)
        a2.set_title("Best trial: val mean AUROC, 95 % CI", fontsize=10)
        fig.suptitle(f"Pruning cost ({NOTE})", fontsize=9)
        fig.tight_layout()
        fig.savefig(img / "tune_pruning.png", dpi=110)
        plt.close(fig)

    (work / "experiments.json").write_text(json.dumps(results, indent=2, default=str))
    text = "\n".join(md)
    (work / "experiments.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
