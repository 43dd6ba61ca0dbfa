"""adata.uns["scelmo"]: one record per step (the latest) and one per output key."""

from __future__ import annotations

import anndata as ad
import numpy as np

import scelmo
from scelmo import keys, provenance


def test_two_embeddings_keep_their_own_records(pbmc, tmp_path):
    a = pbmc[:80].copy()
    scelmo.tl.embed_cells(a, progress=False)
    scelmo.tl.embed_cells(a, aggregator="aa", key_added="X_scelmo_aa", progress=False)
    a.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    prov = back.uns[keys.PROVENANCE]
    # the step record stays the latest run (what the CLI and the R package read)
    assert prov["embed_cells"]["key_added"] == "X_scelmo_aa"
    assert prov["embed_cells"]["aggregator"] == "aa"
    first, second = prov["by_key"]["X_scelmo"], prov["by_key"]["X_scelmo_aa"]
    assert (first["step"], first["aggregator"], first["key_added"]) == ("embed_cells", "wa", "X_scelmo")
    assert (second["step"], second["aggregator"], second["key_added"]) == ("embed_cells", "aa", "X_scelmo_aa")
    assert first["dim"] == back.obsm["X_scelmo"].shape[1]
    assert provenance.for_key(back, "X_scelmo", "embed_cells")["aggregator"] == "wa"
    assert provenance.for_key(back, "X_scelmo_aa")["aggregator"] == "aa"
    assert provenance.for_key(back, "X_other") == {}


def test_rerunning_one_key_replaces_only_that_record(pbmc):
    a = pbmc[:60].copy()
    scelmo.tl.embed_cells(a, progress=False)
    scelmo.tl.embed_cells(a, key_added="X_scelmo_aa", aggregator="aa", progress=False)
    scelmo.tl.embed_cells(a, aggregator="aa", progress=False)  # X_scelmo again, now aa
    by_key = a.uns[keys.PROVENANCE]["by_key"]
    assert sorted(by_key) == ["X_scelmo", "X_scelmo_aa"]
    assert by_key["X_scelmo"]["aggregator"] == "aa"


def test_secrets_dropped_data_keys_kept(pbmc, tmp_path):
    a = pbmc[:5].copy()
    provenance.record(a, "custom", {
        "key_added": "X_custom", "labels_key": "louvain", "api_base": "http://user:hunter22@host/v1",
        "api_key": "sk-abcdef123456", "token": "t0ken-value", "password": "pw-123456", "api_key_env": "MY_KEY",
        "options": {"Authorization": "Bearer abcdefgh", "max_tokens": 5, "cache_key": "local/model"},
        "count": np.int64(3),
    })
    a.write_h5ad(tmp_path / "a.h5ad")
    rec = ad.read_h5ad(tmp_path / "a.h5ad").uns[keys.PROVENANCE]["custom"]
    assert rec["key_added"] == "X_custom" and rec["labels_key"] == "louvain" and rec["api_key_env"] == "MY_KEY"
    assert rec["api_base"] == "http://user:***@host/v1"
    assert not {"api_key", "token", "password"} & set(rec)
    assert dict(rec["options"]) == {"max_tokens": 5, "cache_key": "local/model"}
    assert rec["count"] == 3
    text = repr(ad.read_h5ad(tmp_path / "a.h5ad").uns[keys.PROVENANCE])
    for secret in ("sk-abcdef123456", "t0ken-value", "pw-123456", "hunter22", "abcdefgh"):
        assert secret not in text
    assert ad.read_h5ad(tmp_path / "a.h5ad").uns[keys.PROVENANCE]["by_key"]["X_custom"]["step"] == "custom"
