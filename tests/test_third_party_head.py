"""A task head from a separate distribution: installed, found through its entry point, trained by Model.

The head is the nearest-centroid head of docs/plugins.md (the module part of that block,
as a plugin author would package it). It is installed with pip into a folder under
``tmp_path`` (offline, no build isolation; the venv is not touched) and used from a
subprocess that has that folder on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "scelmo-centroid-example"
MODULE = "scelmo_centroid"


def _head_module_source() -> str:
    """The plugin module of docs/plugins.md (everything above its '# --- trying it' part)."""
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    code = next(b for b in blocks if b.startswith(f"# {MODULE}/__init__.py"))
    return code.split("# --- trying it")[0]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("dist")
    (src / MODULE).mkdir()
    (src / MODULE / "__init__.py").write_text(_head_module_source(), encoding="utf-8")
    (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{DIST}"
        version = "0.1.0"
        dependencies = ["scelmo"]

        [project.entry-points.scelmo]
        centroid = "{MODULE}"

        [tool.setuptools]
        packages = ["{MODULE}"]
        """), encoding="utf-8")
    target = tmp_path_factory.mktemp("site")
    res = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    if res.returncode != 0:
        pytest.fail(f"pip install failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    assert (target / MODULE / "__init__.py").is_file()
    return target


def _run(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCELMO_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert res.returncode == 0, f"{args[:2]} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_installed_head_is_listed_by_scelmo_plugins(site, tmp_path):
    rows = json.loads(_run(site, ["-m", "scelmo", "plugins", "--json"], tmp_path).stdout)
    row = next((r for r in rows if r["plugin"] == "centroid"), None)
    assert row is not None, [r["plugin"] for r in rows]
    assert row["distribution"] == DIST and row["error"] is None
    assert row["provides"] == {"head": ["centroid"]}


SCRIPT = """
import json, sys
import numpy as np
import scelmo
from scelmo import datasets, keys, metrics, plugin, testing

entry = plugin.heads.entry("centroid")
adata = datasets.pbmc68k_reduced()
ge = testing.random_gene_embeddings(list(adata.var_names), dim=32, seed=0)
adata.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(adata.var_names))
perm = np.random.default_rng(0).permutation(adata.n_obs)
train, test = adata[np.sort(perm[210:])].copy(), adata[np.sort(perm[:210])].copy()

scelmo.Model.setup_anndata(train, labels_key="bulk_labels")
model = scelmo.Model(train, head="centroid", temperature=20.0)
model.train()
y = test.obs["bulk_labels"].astype(str).to_numpy()
labels = model.predict(test)
probs = model.predict(test, return_probabilities=True)
z = model.get_latent_representation(test)
model.save("model")
again = scelmo.Model.load("model", adata=test)
print(json.dumps({
    "plugin": entry.plugin, "distribution": entry.distribution, "module": type(model.head).__module__,
    "accuracy": metrics.accuracy(y, labels), "majority": max(float(np.mean(y == c)) for c in set(y)),
    "prob_sums": [float(probs.to_numpy().sum(1).min()), float(probs.to_numpy().sum(1).max())],
    "classes": list(probs.columns), "latent": list(z.shape), "epochs": model.train_info["epochs"],
    "reloaded_same": bool((again.predict() == labels).all()),
    "saved_classes": json.load(open("model/model.json"))["classes"],
    "head_plugin": json.load(open("model/model.json"))["head_plugin"],
}))
"""


def test_installed_head_trains_predicts_and_round_trips_through_model(site, tmp_path):
    out = json.loads(_run(site, ["-c", SCRIPT], tmp_path).stdout.strip().splitlines()[-1])
    assert out["plugin"] == "centroid" and out["distribution"] == DIST
    assert out["module"] == MODULE  # the installed copy, not the docs' block
    assert out["accuracy"] > out["majority"] + 0.2, out
    assert out["prob_sums"][0] == pytest.approx(1.0, abs=1e-6) and out["prob_sums"][1] == pytest.approx(1.0, abs=1e-6)
    assert out["classes"] == sorted(out["classes"]) == out["saved_classes"]
    assert out["latent"] == [210, 32]
    assert out["epochs"] == 1
    assert out["reloaded_same"]
    # the saved model names the distribution its head came from; without it, loading says what to install
    assert out["head_plugin"] == f"{DIST} 0.1.0"
    res = subprocess.run([sys.executable, "-c", "import scelmo; scelmo.Model.load('model')"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert res.returncode != 0 and f"plugin distribution {DIST} 0.1.0, which is not installed here" in res.stderr
