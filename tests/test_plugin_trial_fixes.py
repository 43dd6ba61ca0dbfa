"""Findings of a trial of writing third-party plugins: what a plugin returns is checked and
blamed on the plugin, a custom provider's messages name it (not litellm's options), the
docs' claims about linear aggregators hold, and ``scelmo train`` reports its run in words."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scelmo_torch import cli as torch_cli

from scelmo import keys, tl
from scelmo import plugin as plugins
from scelmo.cli import cli
from scelmo.errors import ConfigError, PluginError, ScelmoError, UnknownPriceError
from scelmo.knowledge.descriptions import describe, estimate
from scelmo.plugin import Aggregator, Completion, Provider, RemoteOptions, TaskHead, hookimpl
from scelmo.testing import make_adata, random_gene_embeddings

GENES = [f"G{i}" for i in range(30)]
DIM = 8


# --------------------------------------------------------------------------- aggregators
def _returning(name: str, make, *, linear: bool = False) -> type[Aggregator]:
    """An aggregator class whose ``aggregate_chunk`` returns ``make(chunk, prepared)``."""

    def aggregate_chunk(self, chunk, prepared, *, n_genes):
        return make(chunk, prepared)

    body = {"name": name, "aggregate_chunk": aggregate_chunk}
    if linear:
        body["row_weights"] = lambda self, chunk, n_genes: np.ones(chunk.shape[0], dtype=np.float32)
    return type(f"Agg_{name}", (Aggregator,), body)


BAD = {
    "t_none": (lambda c, p: None, "returned None"),
    "t_short": (lambda c, p: np.zeros((c.shape[0] - 1, p.shape[1]), np.float32), "rows"),
    "t_list_short": (lambda c, p: [[1.0, 2.0]] * (c.shape[0] - 1), "returned list(shape="),
    "t_1d": (lambda c, p: np.ones(c.shape[0], np.float32), "is 1-D"),
    "t_nan": (lambda c, p: np.full((c.shape[0], p.shape[1]), np.nan, np.float32), "NaN or infinite"),
    "t_text": (lambda c, p: [["a"] * p.shape[1]] * c.shape[0], "cannot be read as an array of real numbers"),
    "t_complex": (lambda c, p: np.ones((c.shape[0], p.shape[1]), np.complex64), "real numbers"),
    "t_zero_width": (lambda c, p: np.zeros((c.shape[0], 0), np.float32), "0 columns"),
}


class _Aggregators:
    """A plugin object registering every aggregator of the tests."""

    classes = [
        *(_returning(name, make) for name, (make, _) in BAD.items()),
        _returning("t_list_ok", lambda c, p: (np.asarray(c @ p) * 0.5).tolist()),
        _returning("t_linear_wide", lambda c, p: np.zeros((c.shape[0], p.shape[1] + 1), np.float32), linear=True),
        _returning("t_growing", lambda c, p: np.zeros((c.shape[0], c.shape[0]), np.float32)),
        _returning("t_maxish", lambda c, p: np.asarray(c @ p, dtype=np.float32)),
    ]

    @hookimpl
    def register_aggregators(self, register):
        for cls in self.classes:
            register(cls)


@pytest.fixture
def bad_aggregators(request):
    plugins.register_plugin(_Aggregators(), "trial_fix_aggregators")
    request.addfinalizer(lambda: plugins.unregister_plugin("trial_fix_aggregators"))


@pytest.fixture
def small(tmp_path):
    adata = make_adata(40, GENES, density=0.4)
    ge = random_gene_embeddings(GENES, dim=DIM)
    return adata, ge


def _embed(adata, ge, aggregator, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tl.embed_cells(adata, gene_embeddings=ge, aggregator=aggregator, flavor="paper", **kw)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_aggregator_return_is_a_plugin_error(bad_aggregators, small, name):
    adata, ge = small
    with pytest.raises(PluginError) as info:
        _embed(adata, ge, name)
    msg = str(info.value)
    assert f"Aggregator {name!r}" in msg and f"Agg_{name}" in msg  # who, and which class
    assert BAD[name][1] in msg, msg  # what it returned
    assert "report it to its author" in msg and "choose another aggregator" in msg
    assert "rows 0-39" in msg  # 0-based and inclusive (was "cells 0..40")
    assert not isinstance(info.value, ConfigError)  # a plugin's bug, not the user's setting


def test_bad_return_names_the_expected_shape(bad_aggregators, small):
    adata, ge = small
    with pytest.raises(PluginError, match=r"returned ndarray\(shape=\(39, 8\), dtype=float32\) for the 40 cells "
                                          r"in rows 0-39, which has 39 rows; expected a float array of shape "
                                          r"\(40, d\)"):
        _embed(adata, ge, "t_short")


def test_a_linear_aggregator_must_keep_the_gene_vectors_width(bad_aggregators, small):
    adata, ge = small
    with pytest.raises(PluginError, match=r"has 9 columns; expected a float array of shape \(40, 8\)"):
        _embed(adata, ge, "t_linear_wide")


def test_every_block_must_have_the_width_of_the_first(bad_aggregators, small):
    adata, ge = small
    with pytest.raises(PluginError, match="returned 10 columns for cells in rows 30-39 but 15 for the cells before"):
        _embed(adata, ge, "t_growing", chunk_size=15)


def test_an_array_like_of_the_right_shape_is_accepted(bad_aggregators, small):
    adata, ge = small
    _embed(adata, ge, "t_list_ok")
    _embed(adata, ge, "t_maxish", key_added="ref")
    out = adata.obsm[keys.X_SCELMO]
    assert out.dtype == np.float32 and out.shape == (40, DIM)
    np.testing.assert_allclose(out, adata.obsm["ref"] * 0.5, rtol=1e-6)


def test_aggregate_api_checks_too(bad_aggregators):
    agg = plugins.aggregators.create("t_none")
    X = make_adata(5, GENES).X
    with pytest.raises(PluginError, match="'t_none'.*returned None for the 5 cells in rows 0-4"):
        agg.aggregate(X, np.ones((len(GENES), DIM), np.float32), progress=False)


def test_cli_prints_one_line_for_a_bad_aggregator(bad_aggregators, small, tmp_path):
    adata, ge = small
    adata.write_h5ad(tmp_path / "in.h5ad")
    ge.save(tmp_path / "ge")
    for name in ("t_short", "t_none", "t_nan"):
        res = CliRunner().invoke(cli, ["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(tmp_path / "out.h5ad"),
                                       "--gene-embeddings", str(tmp_path / "ge"), "--flavor", "paper",
                                       "--aggregator", name, "--overwrite"])
        assert res.exit_code == PluginError.exit_code, res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert len(lines) == 1 and f"Aggregator {name!r}" in lines[0], res.output
        assert "Traceback" not in res.output
        assert "`--aggregator`" in lines[0]  # the Python keyword named as the flag
        assert not (tmp_path / "out.h5ad").exists()


def test_non_linear_aggregator_with_an_explicit_transform_says_what_to_do(bad_aggregators, small):
    adata, ge = small
    for transform in ("center", "scale"):
        with pytest.raises(ConfigError) as info:
            tl.embed_cells(adata, gene_embeddings=ge, aggregator="t_maxish", transform=transform)
        msg = str(info.value)
        assert f'`transform="{transform}"` needs a linear aggregator' in msg and "'t_maxish'" in msg
        assert "row_weights" in msg and '`transform="none"`' in msg and "docs/plugins.md" in msg
    # left to the flavor, a non-linear aggregator reads the values as they are (recorded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl.embed_cells(adata, gene_embeddings=ge, aggregator="t_maxish", n_top_genes=20)
    assert adata.uns[keys.PROVENANCE]["embed_cells"]["transform"] == "none"


def test_linear_means_defining_row_weights(bad_aggregators):
    assert plugins.aggregators.create("t_linear_wide").linear
    assert not plugins.aggregators.create("t_maxish").linear
    assert plugins.aggregators.create("wa").linear and plugins.aggregators.create("aa").linear


# --------------------------------------------------------------------------- providers
class _NoPriceLLM(Provider):
    """A provider as a plugin author first writes it: no price, no api_base, no max_tokens."""

    name = "trialnoprice"

    class Options(RemoteOptions):
        url: str = "http://127.0.0.1:9"

    async def acomplete(self, prompt, *, system=None):
        return Completion(text=f"{prompt[-12:]} is a gene.", prompt_tokens=5, completion_tokens=5, cost=0.0)


class _PricedLLM(_NoPriceLLM):
    """The same, as docs/providers/custom.md says to finish it."""

    name = "trialpriced"

    class Options(RemoteOptions):
        api_base: str = "https://llm.example.org"

    def __init__(self, model="", **options):
        super().__init__(model, **options)
        self.requires_network = not self.options.api_base.startswith("http://127.0.0.1")

    def price(self, prompt_tokens, completion_tokens):
        return 0.0

    def expected_completion_tokens(self):
        return 50


class _Providers:
    @hookimpl
    def register_providers(self, register):
        register(_NoPriceLLM)
        register(_PricedLLM)


@pytest.fixture
def providers(request):
    plugins.register_plugin(_Providers(), "trial_fix_providers")
    request.addfinalizer(lambda: plugins.unregister_plugin("trial_fix_providers"))


def test_max_cost_with_a_provider_without_price_names_it(providers, tmp_path):
    cfg = {"describe.model": "trialnoprice/tiny"}
    with pytest.raises(UnknownPriceError) as info:
        describe(["CD3E"], config=cfg, max_cost=1.0)
    msg = str(info.value)
    assert "'trialnoprice'" in msg and "Provider.price()" in msg and "its author" in msg
    assert "--max-cost" in msg
    assert "input_cost_per_token" not in msg and "litellm" not in msg  # options it does not have
    # the CLI: one line, exit code 2, before any call
    res = CliRunner().invoke(cli, ["describe", "genes", "CD3E", "--model", "trialnoprice/tiny",
                                   "-o", str(tmp_path / "d.tsv"), "--max-cost", "1"])
    assert res.exit_code == 2, res.output
    assert "has no price: its author can implement `Provider.price()`" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "d.tsv").exists()


def test_dry_run_notes_name_the_provider_not_litellm(providers):
    est = estimate(["CD3E", "MS4A1"], config={"describe.model": "trialnoprice/tiny"})
    notes = " | ".join(est.notes)
    assert est.cost is None
    assert "input_cost_per_token" not in notes and "(max_tokens)" not in notes, notes
    assert "'trialnoprice'" in notes and "Provider.price()" in notes
    assert "Provider.expected_completion_tokens()" in notes
    # a provider that implements them: its price and its own completion tokens
    est = estimate(["CD3E", "MS4A1"], config={"describe.model": "trialpriced/tiny"})
    assert est.cost == 0.0 and est.completion_tokens == 100
    assert est.notes == ["completion tokens assumed 50 per answer (from trialpriced's expected_completion_tokens())"]


def test_a_priced_provider_runs_under_a_cost_limit(providers):
    res = describe(["CD3E"], config={"describe.model": "trialpriced/tiny"}, max_cost=0.5)
    assert "CD3E" in res.texts and res.usage.cost == 0.0


def test_api_base_reaches_a_provider_that_declares_it_and_offline_allows_loopback(providers):
    loopback = {"describe.model": "trialpriced/tiny", "describe.api_base": "http://127.0.0.1:8765", "offline": True}
    assert estimate(["CD3E"], config=loopback).calls == 1
    with pytest.raises(ScelmoError, match="uses the network"):
        estimate(["CD3E"], config={**loopback, "describe.api_base": "https://llm.example.org"})


def test_api_base_on_a_provider_without_it_says_what_its_author_must_add(providers):
    res = CliRunner().invoke(cli, ["--set", "describe.api_base=http://127.0.0.1:8765", "describe", "genes", "CD3E",
                                   "--model", "trialnoprice/tiny", "--dry-run"])
    assert res.exit_code == 2, res.output
    msg = " ".join(res.output.split())
    assert "'trialnoprice'" in msg and "which takes no api_base" in msg
    assert "would need the option `api_base`" in msg and "its author can add" in msg
    assert "(it takes: concurrency, timeout, retries, backoff, max_backoff, url)" in msg
    assert "docs/providers/custom.md" in msg
    offline = CliRunner().invoke(cli, ["--offline", "describe", "genes", "CD3E", "--model", "trialnoprice/tiny",
                                       "--dry-run"])
    assert offline.exit_code == 2 and "`self.requires_network = False`" in offline.output, offline.output


# --------------------------------------------------------------------------- scelmo train
def test_train_summary_wording():
    assert torch_cli._how_trained(1, "", 0.94) == "1 epoch in 0.9 s"
    assert torch_cli._how_trained(1, None, 0.94) == "1 epoch in 0.9 s"
    assert torch_cli._how_trained(12, "cpu", 3.0) == "12 epochs on cpu in 3.0 s"
    assert torch_cli._how_trained(None, "cuda:0", 3.0) == "on cuda:0 in 3.0 s"


class _MeanHead(TaskHead):
    """A head without a device: the cells' mean expression, one 'epoch'."""

    name = "trialfixmean"
    requires_labels = False
    capabilities = frozenset({"latent"})

    def fit(self, X, labels=None, *, gene_vectors=None, gene_names=None, batch=None, perturbations=None,
            training=None):
        self.history = [{"epoch": 1.0}]
        return self

    def transform(self, X, *, gene_vectors=None, gene_names=None, device=None):
        return np.asarray(X @ gene_vectors, dtype=np.float32)

    def save_state(self, directory):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "head.json").write_text(json.dumps({"history": self.history}))

    @classmethod
    def load_state(cls, directory):
        head = cls()
        head.history = json.loads((Path(directory) / "head.json").read_text())["history"]
        return head


class _Heads:
    @hookimpl
    def register_heads(self, register):
        register(_MeanHead)


def test_train_reports_one_epoch_without_a_device(tmp_path, request):
    plugins.register_plugin(_Heads(), "trial_fix_heads")
    request.addfinalizer(lambda: plugins.unregister_plugin("trial_fix_heads"))
    plugins.add_commands(cli)  # `train` comes from scelmo_torch, as in the console script
    adata = make_adata(40, GENES, density=0.4)
    adata.write_h5ad(tmp_path / "in.h5ad")
    random_gene_embeddings(GENES, dim=DIM).save(tmp_path / "ge")
    res = CliRunner().invoke(cli, ["train", str(tmp_path / "in.h5ad"), "--head", "trialfixmean",
                                   "--gene-embeddings", str(tmp_path / "ge"), "--layer", "X",
                                   "-o", str(tmp_path / "model")])
    assert res.exit_code == 0, res.output
    assert ", 1 epoch in " in res.output and "epochs" not in res.output and " on  in" not in res.output, res.output
