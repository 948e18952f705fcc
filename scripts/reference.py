"""The reference learner of the scenario suite: LightGBM (from PyPI), offline only.

Fits LightGBM's quantile objective (p50) on the same logged features the trainer sees, on a
scenario's requests before the forced retrain, and measures it on the requests after it, beside
the online statistics' and the served model's answers logged with the same requests. The server
never loads it: it is a yardstick for the trainer's own learner (`docs/evaluation.md`).

    python scripts/reference.py --logs target/evaluate/steady/logs --split-ms 1796177617860

Prints one JSON object. Both forms are fitted: ln latency outright (`absolute`) and its excess
over the route's baseline feature `route_ewma_log_ms` (`relative`), as the trainer does by default.
"""

import argparse
import glob
import gzip
import json
import math
import os
import sys

import lightgbm
import numpy as np

BASELINE = 4  # index of route_ewma_log_ms in the feature vector (contract::FEATURE_NAMES)


def records(folder):
    paths = sorted(glob.glob(os.path.join(folder, "**", "*.ndjson"), recursive=True))
    paths += sorted(glob.glob(os.path.join(folder, "**", "*.ndjson.gz"), recursive=True))
    for path in paths:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield json.loads(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--logs", required=True)
    parser.add_argument("--split-ms", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--leaves", type=int, default=15)
    parser.add_argument("--min-leaf", type=int, default=200)
    args = parser.parse_args()

    train_x, train_y, test = [], [], []
    for r in records(args.logs):
        if r["shed"] or r["status"] >= 500:
            continue
        y = math.log(max(r["latency_ms"], 0.001))
        if r["ts_ms"] < args.split_ms:
            train_x.append(r["features"])
            train_y.append(y)
        else:
            test.append((r["features"], y, r.get("model_ms", [0, 0])[0], r.get("online_ms", [0, 0])[0]))
    if len(train_x) < 200 or not test:
        json.dump({"error": f"too few rows: {len(train_x)} before the split, {len(test)} after"}, sys.stdout)
        print()
        return
    x = np.asarray(train_x, dtype=np.float64)
    y = np.asarray(train_y)
    tx = np.asarray([t[0] for t in test], dtype=np.float64)
    ty = np.asarray([t[1] for t in test])
    params = {
        "objective": "quantile",
        "alpha": 0.5,
        "num_leaves": args.leaves,
        "min_data_in_leaf": min(args.min_leaf, max(1, len(train_x) // 20)),
        "learning_rate": 0.1,
        "verbose": -1,
        "num_threads": 1,
    }
    # Judged on the rows where the served model and the online statistics both logged an
    # answer, so all four figures are on the same requests.
    keep = np.asarray([t[2] > 0 and t[3] > 0 for t in test])
    if not keep.any():
        keep = np.ones(len(test), dtype=bool)
    out = {"rows_train": len(train_x), "rows_eval": int(keep.sum())}
    for name, offset, test_offset in (
        ("absolute", 0.0, 0.0),
        ("relative", x[:, BASELINE], tx[:, BASELINE]),
    ):
        booster = lightgbm.train(params, lightgbm.Dataset(x, label=y - offset), num_boost_round=args.rounds)
        predicted = booster.predict(tx) + test_offset
        out[f"lightgbm_{name}_mae_log"] = float(np.mean(np.abs(ty - predicted)[keep]))
    model = np.asarray([t[2] for t in test])
    online = np.asarray([t[3] for t in test])
    if (keep & (model > 0) & (online > 0)).any():
        out["model_mae_log"] = float(np.mean(np.abs(ty - np.log(np.maximum(model, 1e-6)))[keep]))
        out["online_mae_log"] = float(np.mean(np.abs(ty - np.log(np.maximum(online, 1e-6)))[keep]))
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
