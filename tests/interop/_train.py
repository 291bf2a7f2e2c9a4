"""Train the interop test's three scikit-learn models and write MLServer model directories.

Run with ``.venv-interop/bin/python tests/interop/_train.py OUT`` (not by pytest: it needs
scikit-learn and MLServer's runtime, which live in the interop virtualenv only). Writes
``OUT/a/fraud-lr/`` and ``OUT/a/fraud-gbm/`` (one MLServer serves both), ``OUT/b/fraud-tree/``
(a second MLServer), each with model.joblib and model-settings.json; ``OUT/samples.json`` (the
rows the test sends) and ``OUT/expected.json`` (each model's predict_proba of every row).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

SAMPLES = 12
#: model name -> (server folder, version)
MODELS = {"fraud-lr": ("a", "1"), "fraud-gbm": ("a", "2"), "fraud-tree": ("b", "3")}


def _model_settings(name: str, version: str) -> dict[str, object]:
    return {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
    }


def main(out: Path) -> None:
    features, target = make_classification(n_samples=400, n_features=6, n_informative=4,
                                           random_state=3)
    fitted = {
        "fraud-lr": LogisticRegression(max_iter=500).fit(features, target),
        "fraud-gbm": GradientBoostingClassifier(n_estimators=20, random_state=0).fit(
            features, target),
        "fraud-tree": DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, target),
    }
    rng = np.random.default_rng(7)
    rows = features[rng.choice(len(features), SAMPLES, replace=False)]
    expected: dict[str, list[list[float]]] = {}
    for name, model in fitted.items():
        server, version = MODELS[name]
        folder = out / server / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps(_model_settings(name, version)))
        expected[name] = model.predict_proba(rows).tolist()
    (out / "samples.json").write_text(json.dumps(rows.tolist()))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
