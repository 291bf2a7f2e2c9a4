"""Train the interop test's two scikit-learn models and write MLServer model directories.

Run with ``.venv-interop/bin/python tests/interop/_train.py OUT`` (not by pytest: it needs
scikit-learn and MLServer's runtime, which live in the interop virtualenv only). Writes
``OUT/{a,b}/`` (model.joblib, model-settings.json), ``OUT/samples.json`` (the rows the test
sends) and ``OUT/expected.json`` (each model's predict_proba of every row).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

MODEL_NAME = "iris"
SAMPLES = 12


def _model_settings(version: str) -> dict[str, object]:
    return {
        "name": MODEL_NAME,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
    }


def main(out: Path) -> None:
    features, target = load_iris(return_X_y=True)
    models = {
        "a": LogisticRegression(max_iter=500).fit(features, target),
        "b": DecisionTreeClassifier(max_depth=2, random_state=0).fit(features, target),
    }
    rng = np.random.default_rng(7)
    rows = features[rng.choice(len(features), SAMPLES, replace=False)]
    expected: dict[str, list[list[float]]] = {}
    for name, model in models.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        joblib.dump(model, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps(_model_settings(f"{name}-1")))
        expected[name] = model.predict_proba(rows).tolist()
    (out / "samples.json").write_text(json.dumps(rows.tolist()))
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
