"""How the registries take what plugins register: a plugin that registers badly is skipped
with a warning and never changes a built-in component (findings of a plugin-author trial)."""

from __future__ import annotations

import warnings

import click
import numpy as np
import pytest

from scelmo import plugin as plugins
from scelmo.errors import PluginError, PluginWarning
from scelmo.plugin import Aggregator, TaskHead, TextEmbedder, hookimpl, manager


class _Sum(Aggregator):
    """Sum of the gene vectors (a test aggregator)."""

    name = "trial-sum"

    def aggregate_chunk(self, chunk, prepared, *, n_genes):
        return np.asarray(chunk @ prepared)


class _FakeWa(_Sum):
    name = "wa"  # a built-in name


class _FakeLocal(TextEmbedder):
    name = "local"  # the built-in offline embedder's name

    def embed(self, texts):  # pragma: no cover - never registered
        raise AssertionError


@pytest.fixture
def runtime():
    """register_plugin(...) under a fresh name; everything it registered is removed after."""
    names = []

    def add(obj, name):
        names.append(name)
        plugins.register_plugin(obj, name)

    plugins.aggregators.names()  # (filled: a run-time plugin is added to filled registries at once)
    plugins.embedders.names()
    plugins.heads.names()
    yield add
    for name in names:
        plugins.unregister_plugin(name)


def test_a_taken_name_skips_that_component_only_and_the_built_in_stays(runtime):
    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(_FakeWa)
            register(_Sum)

        @hookimpl
        def register_embedders(self, register):
            register(_FakeLocal)

    with pytest.warns(PluginWarning) as rec:
        runtime(P(), "trial-override")
    text = " ".join(str(w.message) for w in rec)
    assert "'wa' is registered twice" in text and "'local' is registered twice" in text
    assert "that component was skipped" in text
    assert plugins.aggregators.entry("wa").plugin == "zeroshot"  # the built-in, unchanged
    assert plugins.embedders.entry("local").plugin == "local"
    assert plugins.aggregators.entry("trial-sum").plugin == "trial-override"  # its other component is kept
    info = {i.name: i for i in plugins.plugin_infos()}["trial-override"]
    assert "'wa'" in info.error and "'local'" in info.error  # every failure, not the last only


def test_a_hook_that_raises_leaves_nothing_it_registered(runtime):
    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(_Sum)
            raise RuntimeError("second registration failed")

    with pytest.warns(PluginWarning, match="register_aggregators and was skipped: RuntimeError"):
        runtime(P(), "trial-half")
    assert "trial-sum" not in plugins.aggregators


def test_an_alias_never_takes_another_components_name(runtime):
    class Sneaky(_Sum):
        name = "trial-sneaky"

    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(Sneaky, aliases=("wa", "trial-sneak"))

    with pytest.warns(PluginWarning, match="alias 'wa' of aggregator 'trial-sneaky' is already the name of 'wa'"):
        runtime(P(), "trial-alias")
    assert plugins.aggregators.entry("wa").plugin == "zeroshot"
    assert plugins.aggregators.entry("trial-sneak").name == "trial-sneaky"  # its own alias works


def test_a_head_with_an_unknown_capability_is_refused_with_the_known_ones(runtime):
    class Typo(TaskHead):
        name = "trial-typo"
        capabilities = frozenset({"latent", "label"})

        def fit(self, *args, **kwargs):  # pragma: no cover
            raise AssertionError

    class P:
        @hookimpl
        def register_heads(self, register):
            register(Typo)

    with pytest.warns(PluginWarning, match=r"unknown capabilities \['label'\].*'labels'"):
        runtime(P(), "trial-heads")
    assert "trial-typo" not in plugins.heads


def test_strict_mode_fails_every_look_up_not_only_the_first(runtime, monkeypatch):
    """A registry whose filling raised was left marked as filled: the next look-up used the
    half of it that was there (a healthy plugin's aggregator gone, a clash resolved silently)."""

    class P:
        @hookimpl
        def register_aggregators(self, register):
            register(_FakeWa)

    with pytest.warns(PluginWarning):
        runtime(P(), "trial-strict")
    monkeypatch.setenv("SCELMO_STRICT_PLUGINS", "1")
    plugins.aggregators.clear()  # the next look-up fills it again, now strictly
    try:
        for _ in range(2):
            with pytest.raises(PluginError, match="registered twice"):
                plugins.aggregators.get("aa")
    finally:
        monkeypatch.delenv("SCELMO_STRICT_PLUGINS")
        plugins.aggregators.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        assert plugins.aggregators.entry("wa").plugin == "zeroshot"


def test_a_plugin_command_never_replaces_an_existing_one(runtime):
    class P:
        @hookimpl
        def register_commands(self, cli):
            @cli.command("embed-cells")
            def hijack():
                click.echo("HIJACKED")

            @cli.command("trial-hello")
            def hello():
                click.echo("hello")

    runtime(P(), "trial-cmd")

    @click.group()
    def cli():
        pass

    @cli.command("embed-cells")
    def embed_cells():
        click.echo("the real one")

    with pytest.warns(PluginWarning, match="tried to replace the command 'embed-cells'; the existing command was kept"):
        manager.add_commands(cli)
    from click.testing import CliRunner

    assert CliRunner().invoke(cli, ["embed-cells"]).output.strip() == "the real one"
    assert CliRunner().invoke(cli, ["trial-hello"]).output.strip() == "hello"
    assert plugins.plugin_commands("trial-cmd") == ["trial-hello"]
    assert "train" in plugins.plugin_commands("torch")  # (the built-in plugin's commands came first)


def test_several_catch_all_components_warn_and_the_built_in_one_serves(runtime):
    from scelmo.plugin import Provider

    class Catch(Provider):
        name = "trial-catch"

        async def acomplete(self, prompt, **kwargs):  # pragma: no cover
            raise AssertionError

    class P:
        @hookimpl
        def register_providers(self, register):
            register(Catch, catch_all=True)

    plugins.providers.names()
    runtime(P(), "trial-catchall")
    with pytest.warns(PluginWarning, match="Several LLM providers take any model string.*go to 'litellm'"):
        entry, model = plugins.providers.resolve_model("openai/gpt-4o-mini")
    assert entry.name == "litellm" and model == "openai/gpt-4o-mini"
    assert plugins.providers.resolve_model("trial-catch/x")[0].name == "trial-catch"
