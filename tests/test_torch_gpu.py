"""GPU checks (skipped without CUDA): heads train on CUDA with bf16 autocast; wa_torch on the device."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scelmo
from scelmo import datasets, keys, metrics, testing

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def split():
    a = datasets.pbmc68k_reduced()
    ge = testing.random_gene_embeddings(list(a.var_names), dim=32)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    perm = np.random.default_rng(0).permutation(a.n_obs)
    return a[np.sort(perm[210:])].copy(), a[np.sort(perm[:210])].copy()


@pytest.mark.parametrize("amp", [True, False])
def test_annotation_trains_on_cuda(split, amp):
    train, test = split
    scelmo.Model.setup_anndata(train, labels_key="bulk_labels")
    m = scelmo.Model(train).train(max_epochs=15, device="cuda", amp=amp)
    assert m.head.device.type == "cuda"
    y = test.obs["bulk_labels"].astype(str).to_numpy()
    assert metrics.accuracy(y, m.predict(test)) > 0.55
    z_gpu = m.get_latent_representation(test, device="cuda")
    z_cpu = m.get_latent_representation(test, device="cpu")
    np.testing.assert_allclose(z_gpu, z_cpu, rtol=1e-3, atol=1e-4)


def test_batches_gathered_on_the_gpu_train_like_host_batches(split, monkeypatch):
    """data_on_device=True (the CSR on the GPU, batches gathered there) = the host-densified batches."""
    from scelmo_torch.base import DeviceRows

    calls = []
    gather = DeviceRows.dense
    monkeypatch.setattr(DeviceRows, "dense", lambda self, rows: calls.append(len(rows)) or gather(self, rows))
    train, test = split
    train = train.copy()
    train.X = sp.csr_matrix(train.X)
    scelmo.Model.setup_anndata(train, labels_key="bulk_labels")
    latents = []
    for on_device in (True, False):
        calls.clear()
        m = scelmo.Model(train).train(max_epochs=4, device="cuda", amp=False, data_on_device=on_device)
        assert bool(calls) == on_device
        latents.append(m.get_latent_representation(test, device="cpu"))
    np.testing.assert_allclose(latents[0], latents[1], rtol=1e-3, atol=1e-4)


def test_device_rows_on_cuda_match_scipy():
    from scelmo_torch.base import DeviceRows

    X = sp.random(5000, 300, density=0.05, format="csr", random_state=0, dtype=np.float32)
    d = DeviceRows(X, torch.device("cuda"))
    rows = np.random.default_rng(0).choice(5000, 512, replace=False)
    np.testing.assert_array_equal(d.dense(rows).cpu().numpy(), X[rows].toarray())
    assert DeviceRows.fits(X, torch.device("cuda"))


def test_integration_trains_on_cuda(split):
    a = datasets.simulate_batches(datasets.pbmc68k_reduced(), seed=0)
    a.varm[keys.GENE_EMBEDDING] = split[0].varm[keys.GENE_EMBEDDING]
    scelmo.Model.setup_anndata(a, batch_key="batch", labels_key="bulk_labels")
    m = scelmo.Model(a, head="integration").train(max_epochs=10, device="cuda")
    z = m.get_latent_representation()
    assert np.isfinite(z).all() and z.shape == (a.n_obs, 32)


def test_saved_gpu_model_loads_on_cpu(split, tmp_path):
    train, test = split
    scelmo.Model.setup_anndata(train, labels_key="bulk_labels")
    m = scelmo.Model(train).train(max_epochs=3, device="cuda")
    m.save(tmp_path / "m")
    loaded = scelmo.Model.load(tmp_path / "m", adata=test)
    np.testing.assert_array_equal(loaded.predict(test, device="cpu"), m.predict(test, device="cpu"))


def test_wa_torch_on_cuda_matches_numpy():
    genes = [f"G{i}" for i in range(300)]
    a = testing.make_adata(5000, genes, seed=2, density=0.1)
    ge = testing.random_gene_embeddings(genes, dim=64)
    scelmo.tl.embed_cells(a, gene_embeddings=ge, aggregator="wa", key_added="np", chunk_size=1000)
    scelmo.tl.embed_cells(a, gene_embeddings=ge, aggregator="wa_torch", key_added="gpu", chunk_size=1000,
                          config={"aggregate.options": {"device": "cuda"}})
    np.testing.assert_allclose(a.obsm["gpu"], a.obsm["np"], rtol=1e-4, atol=1e-5)
