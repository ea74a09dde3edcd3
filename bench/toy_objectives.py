"""iMF vs original MeanFlow vs flow matching on the 2-D mixture, same network, budget and seed.

Prints 1-NFE and 2-NFE class-averaged energy distances (lower is better). No thresholds.
    python bench/toy_objectives.py [--steps 1500]
"""

import argparse
import time

from imf_core import DrawConfig, FlowMatchingObjective, IMFObjective, MeanFlowObjective
from imf_core.toy import toy_distance, train_toy


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--classes", type=int, default=4)
    args = parser.parse_args()
    K = args.classes
    runs = {
        "iMF (aux v-head)": (IMFObjective(K), DrawConfig()),
        "iMF (boundary tangent)": (IMFObjective(K, tangent="boundary"), DrawConfig()),
        "MeanFlow (omega 1, kappa 0)": (MeanFlowObjective(K, omega=1.0, kappa=0.0), DrawConfig(ratio_r_neq_t=0.25)),
        "flow matching": (FlowMatchingObjective(K), DrawConfig()),
    }
    print(f"{'objective':30s} {'1-NFE':>8s} {'2-NFE':>8s} {'seconds':>8s}")
    for name, (objective, draws) in runs.items():
        start = time.time()
        net = train_toy(objective, num_classes=K, steps=args.steps, draw_cfg=draws)
        seconds = time.time() - start
        d1, d2 = toy_distance(net, K, steps=1), toy_distance(net, K, steps=2)
        print(f"{name:30s} {d1:8.4f} {d2:8.4f} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
