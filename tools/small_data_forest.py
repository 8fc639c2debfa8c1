"""Forest plot of the paired differences in docs/experiments/results/small_data_more_*.json (the "What else was
tried" table of docs/small-data.md): each path's mean-AUROC difference to the random-init CheXNet recipe, with its
95 % CI, per CV seed.

    python tools/small_data_forest.py docs/experiments/results/small_data_more_2026-12-07.json \\
        docs/img/small-data-more.png
"""
from __future__ import annotations

import json
import re
import sys

LINE = re.compile(r"^(?P<label>.+?): mean AUROC (?P<auc>[\d.]+) \[[\d., ]+\]; (?P<d>[+-][\d.]+) "
                  r"\[(?P<lo>[+-][\d.]+), (?P<hi>[+-][\d.]+)\] vs reference$")

# (row label in the figure, source stem without the seed, label prefix in that output)
ROWS = [
    ("phantom init (cxr_tiny, 128 px), 10 models", "tool_mix_cv64", "chexnet_init_phsup128_bundle-e4431af4 (10"),
    ("phantom init (cxr_tiny, 64 px), 10 models", "tool_mix_cvp64", "chexnet_init_phsup64_bundle-0b6a0cdb (10"),
    ("phantom init with radiograph augmentation, 3 models", "tool_mix_cvp64aug",
     "chexnet_init_phsup64aug_bundle-caad467c (3"),
    ("phantom init, --freeze partial, 3 models", "tool_mix_cvpart", "chexnet_init_phsup128_bundle-e4431af4 (3"),
    ("phantom init, linear probe, 3 models", "tool_mix_cvlp", "chexnet_init_phsup128_bundle-e4431af4 (3"),
    ("lung-field centring, phantom init, 3 models", "tool_mix_cvc80", "chexnet_init_phsup128_bundle-e4431af4 (3"),
    ("real + 1,000 phantoms per epoch, 3 models", "co1000", "1000 phantoms + real, 3-model"),
    ("resnet18, random init, 5 models", "tool_mix_cvr18", "chexnet_random-e0c52cdd (5"),
    ("resnet18, phantom init, 5 models", "tool_mix_cvr18", "chexnet_init_phsupr18_bundle-6d3fac27 (5"),
    ("DenseNet-121, phantom init, single", "tool_mix_cvd121", "chexnet_init_phsupd121_bundle-7a9a03b2 (single"),
    ("2 recipes, phantom init, 15 models", "tool_mix_cv64", "chexnet_init_phsup128_bundle-e4431af4+small-data_init_phsup128_bundle-53ede6e3 ("),
    ("2 architectures, 3 phantom inits, 25 models", "tool_mix_cvr18", "chexnet_init_phsupr18_bundle-6d3fac27+cv64_s{seed}/chexnet_init_phsup128_bundle-e4431af4+cvp64_s{seed}/"),
]


def parse(outputs: dict[str, list[str]]) -> dict[tuple[str, int], tuple[float, float, float]]:
    found = {}
    for label, stem, prefix in ROWS:
        for seed in (0, 1):
            key = f"{stem}_s{seed}" if stem != "co1000" else ("co1000_s0_tool" if seed == 0 else "co1000_s1")
            for line in outputs.get(key, []):
                m = LINE.match(line)
                if m and m["label"].startswith(prefix.format(seed=seed)):
                    found[(label, seed)] = (float(m["d"]), float(m["lo"]), float(m["hi"]))
    return found


def main(src: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = parse(json.load(open(src))["tool_outputs"])
    labels = [r[0] for r in ROWS]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.6))
    for seed, colour, dy in ((0, "#1f77b4", -0.13), (1, "#ff7f0e", 0.13)):
        legend = f"CV seed {seed}"
        for i, label in enumerate(labels):
            if (label, seed) not in data:
                continue
            d, lo, hi = data[(label, seed)]
            ax.errorbar(d, i + dy, xerr=[[d - lo], [hi - d]], fmt="o", color=colour, capsize=3, label=legend)
            legend = None  # one legend entry per seed
    ax.axvline(0, color="grey", lw=1)
    ax.axvline(0.08, color="red", lw=1, ls="--", label="goal +0.08")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel("mean AUROC minus the CheXNet recipe from random weights\n(cxr_tiny, 64 px, same folds; "
                  "paired 95 % CI)")
    ax.set_title("What else was tried: 421 real NIH films, 5-fold patient CV (research use only)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}: {len(data)} of {2 * len(labels)} (row, seed) points")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tools/small_data_forest.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
