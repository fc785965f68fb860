"""Train the sklearn-iris example model and write its weights directory.

    python3 train.py --version 1 --out DIR

writes ``DIR/model.joblib`` (a fitted StandardScaler + LogisticRegression pipeline) and
``DIR/model.json`` (the model card the server reads). The iris data ships inside
scikit-learn, so nothing is downloaded. The hermetic build runs this with the image's own
Python and scikit-learn (a pickle is only safe to load with the version that wrote it);
tests run it with theirs. Versions differ in regularisation, so v2's weights and
probabilities differ from v1's while both classify the iris data well.
"""

from __future__ import annotations

import argparse
import json
import os

import joblib
import sklearn
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

#: Inverse regularisation strength per model version.
HYPERPARAMETERS = {"1": {"C": 1.0}, "2": {"C": 0.05}}


def train(version: str, out: str) -> dict[str, object]:
    if version not in HYPERPARAMETERS:
        raise SystemExit(f"unknown version {version!r}; known: {sorted(HYPERPARAMETERS)}")
    iris = load_iris()
    params = HYPERPARAMETERS[version]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, **params))
    model.fit(iris.data, iris.target)
    os.makedirs(out, exist_ok=True)
    joblib.dump(model, os.path.join(out, "model.joblib"))
    card = {
        "name": "sklearn-iris",
        "version": version,
        "framework": "scikit-learn",
        "framework_version": sklearn.__version__,
        "estimator": "StandardScaler + LogisticRegression",
        "hyperparameters": params,
        "feature_names": list(iris.feature_names),
        "class_names": [str(name) for name in iris.target_names],
        "training_accuracy": round(float(model.score(iris.data, iris.target)), 4),
    }
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="1", choices=sorted(HYPERPARAMETERS))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    print(json.dumps(train(args.version, args.out)))


if __name__ == "__main__":
    main()
