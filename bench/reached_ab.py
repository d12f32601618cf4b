"""The acceptance model trained on every verified node, or only on nodes whose parent was accepted (reached), on the
same split of one collect: held-out calibration by depth on reached nodes, and replays of the learned rule.

    python bench/reached_ab.py runs/collect        # a `speckv collect` output directory

The rule values a node as the product of acceptances along its path, so what it needs from the model is P(accept |
parent accepted); a node whose parent was rejected answers a counterfactual (the target's argmax after a prefix it
did not take). Replays (:func:`speckv.oracle.replay_trees`) use each level's costs measured by the collect.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from speckv.costs import CostModel
from speckv.oracle import replay_trees, subset, tree_arrays
from speckv.policies.learned.model import AcceptanceModel
from speckv.train_policy import by_level, load_steps, reached, samples, split_by_prompt, train

path = Path(sys.argv[1])
df = load_steps(path)
held = split_by_prompt(df, 0.2, 0)
arr = tree_arrays(df)
train_arr, test = subset(arr, ~held), subset(arr, held)
costs = {p.stem: CostModel.from_json(p.read_text()) for p in sorted((path / "costs").glob("*.json"))}
models = {}
for name, only in (("every node", False), ("reached only", True)):
    x, y = samples(train_arr, only)
    models[name] = AcceptanceModel(train(x, y, 8, 40, 0))
    print(f"{name}: {len(x)} training nodes, accept rate {float(y.mean()):.3f}")

keep = reached(test).reshape(-1)
depth = test["depth"].reshape(-1)[keep]
x, y = samples(test, True)
print("\nheld-out reached nodes by depth: n, accepted, mean prediction (every node | reached only)")
with torch.no_grad():
    p = {name: torch.sigmoid(m.mlp(x)).numpy() for name, m in models.items()}
for d in range(1, int(depth.max()) + 1):
    at = depth == d
    if at.sum() >= 20:
        print(f"  depth {d}: {int(at.sum()):6d}  {float(y[at].mean()):.3f}  "
              + " | ".join(f"{p[n][at].mean():.3f}" for n in models))

print("\nreplayed held-out steps, learned rule: tokens/step, est. tokens/s (every node | reached only), oracle")
for level, level_costs, sub in by_level(test, costs):
    for batch in (1, 8):
        runs = {n: replay_trees(sub, level_costs, batch, "learned", m) for n, m in models.items()}
        best = replay_trees(sub, level_costs, batch, "oracle")
        a, b = runs["every node"], runs["reached only"]
        print(f"  {level} batch {batch}: {a['tokens_per_step']:.2f} | {b['tokens_per_step']:.2f} tokens/step, "
              f"{a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} tok/s "
              f"({b['tokens_per_s'] / a['tokens_per_s']:.3f}×), "
              f"nodes {a['mean_nodes']:.2f} | {b['mean_nodes']:.2f}; oracle {best['tokens_per_s']:.1f}")
