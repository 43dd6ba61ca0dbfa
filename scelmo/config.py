"""Configuration (pydantic-settings).

Precedence, highest first:

1. keyword arguments (``get_settings(offline=True)``, ``config=`` of API functions);
2. ``SCELMO_*`` environment variables (nested with ``__``: ``SCELMO_EMBED__MODEL``);
3. ``./scelmo.toml`` in the working directory (or the file in ``SCELMO_CONFIG_FILE``);
4. ``config.toml`` in the user config dir (``SCELMO_CONFIG_DIR`` overrides the dir);
5. the named profile (``profile = "..."``): bundled ``scelmo/profiles/NAME.toml`` or
   ``<user config dir>/profiles/NAME.toml``;
6. the defaults below.

Unknown keys are errors, wherever they come from. Exactly two provider roles exist:
``describe`` (writes a text per gene) and ``embed`` (turns texts into vectors). The
default profile is fully offline. Secrets (API keys) belong in the environment; any
that end up in the config are masked by :func:`show`.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_cache_dir
from platformdirs import user_config_dir as _ucd
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from scelmo.errors import ConfigError
from scelmo.redact import mask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the backport (a dependency there)
    import tomli as tomllib

ENV_PREFIX = "SCELMO_"
#: Environment variables that configure the process, not the settings model.
RESERVED_ENV = {
    "SCELMO_LOAD_PLUGINS",
    "SCELMO_STRICT_PLUGINS",
    "SCELMO_CONFIG_DIR",
    "SCELMO_CONFIG_FILE",
    "SCELMO_NO_PROGRESS",
    "SCELMO_DATA_DIR",  # scelmo.datasets
    "SCELMO_KANG_DIR",  # benchmarks
    "SCELMO_VENV",  # scripts/run, .ci/run
    "SCELMO_CI_SKIP_R",  # .ci/run
    "SCELMO_REQUIRE_PYTHON",  # the R package
    "SCELMO_TESTTHAT",  # the R package's tests
}
_PROFILES_DIR = Path(__file__).parent / "profiles"
#: Each role's model when no layer names one: the offline default.
DEFAULT_MODELS = {"describe": "local", "embed": "local/all-MiniLM-L6-v2-int8"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RoleConfig(_Section):
    """A provider role: a model string plus options for the component serving it.

    ``model`` is matched against registered components: ``"local"`` is the offline
    knowledge table, ``"local/all-MiniLM-L6-v2-int8"`` the offline embedder; any
    other ``vendor/model`` string goes to a catch-all provider plugin (litellm).
    """

    model: str
    #: litellm router deployments (for load balancing / fallbacks), if any.
    model_list: list[dict[str, Any]] | None = None
    api_base: str | None = None
    #: Prefer ``api_key_env``; a key given here is never printed or stored.
    api_key: SecretStr | None = None
    #: Name of the environment variable holding the API key.
    api_key_env: str | None = None
    #: Component-specific options (validated by the component; unknown keys are errors).
    options: dict[str, Any] = Field(default_factory=dict)


class AggregateConfig(_Section):
    """How gene vectors become cell vectors (see :func:`scelmo.tl.embed_cells`).

    ``flavor`` sets the defaults of ``genes``, ``normalize``, ``transform`` and
    ``condition`` together: ``"scelmo"`` (default: highly variable genes of the
    log-normalised data, centred per gene, conditioned gene vectors) or ``"paper"``
    (the paper's formula: every gene, the values as given, raw gene vectors). Any of
    the four set explicitly overrides the flavor.
    """

    method: str = "wa"
    layer: str | None = None
    use_raw: bool | None = None
    l2_normalize: bool = False
    chunk_size: int = Field(10_000, ge=1)
    options: dict[str, Any] = Field(default_factory=dict)
    flavor: Literal["scelmo", "paper"] = "scelmo"
    #: ``"hvg"``: the ``n_top_genes`` most variable genes (Seurat dispersion); ``"all"``.
    genes: Literal["hvg", "all"] | None = None
    n_top_genes: int = Field(2000, ge=1)
    #: ``"auto"``: log-normalise (per 10k, log1p) when the matrix holds counts; ``"log1p"``:
    #: always; ``"none"``: use the values as given.
    normalize: Literal["auto", "log1p", "none"] | None = None
    #: Per-gene transform of the (normalised) values: ``"center"`` (subtract each gene's
    #: mean), ``"scale"`` (centre and divide by its standard deviation) or ``"none"``.
    transform: Literal["none", "center", "scale"] | None = None
    #: Use the gene table's conditioning (mean and top principal directions removed).
    condition: bool | None = None
    #: Principal directions removed when a table is conditioned. Unset (None): a table without
    #: a conditioning is fitted one with 10 (:data:`scelmo.conditioning.DEFAULT_COMPONENTS`)
    #: and a given (saved) table keeps its own; set, it applies to every table, a given one
    #: refitted for that call (the table itself keeps its own).
    condition_components: int | None = Field(None, ge=0)
    #: Storage of the gene vectors while aggregating: ``"float32"``, ``"bfloat16"`` or
    #: ``"float16"`` (half the memory; accumulation stays float32; float16 is the more
    #: precise of the two, bfloat16 has float32's range).
    precision: Literal["float32", "bfloat16", "float16"] = "float32"
    #: Weight of one more dimension per known cell type (the genes its curated markers or Cell
    #: Ontology definition name) beside the conditioned gene vectors of a table built from
    #: configuration (:mod:`scelmo.knowledge.marker_dims`); 0: off (the default); at most 100.
    cell_type_markers: float = Field(0.0, ge=0, le=100, allow_inf_nan=False)


class GenesConfig(_Section):
    """Gene-name resolution."""

    species: Literal["auto", "human", "mouse"] = "auto"
    #: Warn when fewer genes, or less expression, than this fraction has a vector.
    min_coverage: float = Field(0.5, ge=0, le=1)


class CacheConfig(_Section):
    enabled: bool = True
    #: SQLite file; default ``<user cache dir>/scelmo/cache.sqlite``.
    path: Path | None = None

    def resolved_path(self) -> Path:
        if self.path is not None:
            return Path(self.path).expanduser()

        return Path(user_cache_dir("scelmo")) / "cache.sqlite"


class PluginsConfig(_Section):
    #: Raise instead of warning when a plugin fails to load.
    strict: bool = False


class ScelmoSettings(BaseSettings):
    """The resolved scelmo configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    profile: str = "default"
    #: Refuse any role that would use the network, before the first request.
    offline: bool = False
    describe: RoleConfig = Field(default_factory=lambda: RoleConfig(model=DEFAULT_MODELS["describe"]))
    embed: RoleConfig = Field(default_factory=lambda: RoleConfig(model=DEFAULT_MODELS["embed"]))
    aggregate: AggregateConfig = Field(default_factory=AggregateConfig)
    genes: GenesConfig = Field(default_factory=GenesConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        files = _config_files()
        return (_RoleAwareSources(settings_cls, [
            init_settings,
            env_settings,
            *(_TomlSource(settings_cls, f) for f in files),
            _TomlSource(settings_cls, _profile_file(_selected_profile(init_settings, files))),
        ]),)


#: Sections whose settings belong to the model set beside them.
_ROLES = ("describe", "embed")


def _merge_roles(base: dict[str, Any], top: Mapping[str, Any],
                 owned: dict[str, set[str]] | None = None) -> dict[str, Any]:
    """``top`` over ``base`` (nested dicts merged), except that the settings of a role
    (``describe``, ``embed``) that came with its ``model`` stay with that model: when ``top``
    names another model, the endpoint, key and options set beside the old one are dropped
    (``--describe-model local`` over a file that points ``describe`` at a remote server).
    Settings given on their own (``SCELMO_DESCRIBE__API_BASE`` without a model) stay.

    ``owned``: per role, the keys set together with the current model (updated in place);
    default: every key of ``base``'s role section."""
    if owned is None:
        owned = {r: set(base[r]) - {"model"} for r in _ROLES if isinstance(base.get(r), Mapping)}
    out = _deep_merge(base, {k: v for k, v in top.items() if k not in _ROLES})
    for role in _ROLES:
        if role not in top:
            continue
        mine, theirs = top[role], out.get(role)
        if not (isinstance(mine, Mapping) and isinstance(theirs, Mapping)):
            out[role] = mine
            continue
        theirs = dict(theirs)
        if mine.get("model") is not None and mine.get("model") != theirs.get("model"):
            for key in owned.get(role, set()):
                theirs.pop(key, None)
            owned[role] = set(mine) - {"model"}
        out[role] = _deep_merge(theirs, mine)
    return out


class _RoleAwareSources(PydanticBaseSettingsSource):
    """The sources merged lowest first, by :func:`_merge_roles`."""

    def __init__(self, settings_cls: type[BaseSettings], sources: list[PydanticBaseSettingsSource]) -> None:
        super().__init__(settings_cls)
        self.sources = sources

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        # the roles' default models first: a layer that sets only a role's options (a
        # profile without [embed], `--set embed.options.batch_size=4`) keeps the default model
        out: dict[str, Any] = {role: {"model": model} for role, model in DEFAULT_MODELS.items()}
        owned: dict[str, set[str]] = {}
        for source in reversed(self.sources):
            out = _merge_roles(out, source(), owned)
        return out


class _TomlSource(PydanticBaseSettingsSource):
    """One TOML file (missing files contribute nothing)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self.path = path
        self.data = _read_toml(path) if path is not None and path.is_file() else {}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.data)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from None


def user_config_dir() -> Path:
    env = os.environ.get("SCELMO_CONFIG_DIR")
    if env:
        return Path(env).expanduser()

    return Path(_ucd("scelmo"))


def _config_files() -> list[Path]:
    project = os.environ.get("SCELMO_CONFIG_FILE")
    first = Path(project).expanduser() if project else Path.cwd() / "scelmo.toml"
    if project and not first.is_file():
        raise ConfigError(f"The config file {first} does not exist (given with --config or SCELMO_CONFIG_FILE).")
    return [first, user_config_dir() / "config.toml"]


def _selected_profile(init_settings: PydanticBaseSettingsSource, files: list[Path]) -> str:
    init = init_settings()
    if init.get("profile"):
        return str(init["profile"])
    if os.environ.get(ENV_PREFIX + "PROFILE"):
        return os.environ[ENV_PREFIX + "PROFILE"]
    for f in files:
        if f.is_file():
            prof = _read_toml(f).get("profile")
            if prof:
                return str(prof)
    return "default"


def available_profiles() -> list[str]:
    names = {p.stem for p in _PROFILES_DIR.glob("*.toml")}
    names |= {p.stem for p in (user_config_dir() / "profiles").glob("*.toml")}
    return sorted(names)


def _profile_file(name: str) -> Path:
    for base in (user_config_dir() / "profiles", _PROFILES_DIR):
        path = base / f"{name}.toml"
        if path.is_file():
            return path
    close = difflib.get_close_matches(name, available_profiles(), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ConfigError(
        f"Unknown profile {name!r}.{hint} Available: {', '.join(available_profiles())}. "
        f"Add your own as {user_config_dir() / 'profiles' / (name + '.toml')}."
    )


def _check_env() -> None:
    fields = set(ScelmoSettings.model_fields)
    for var in os.environ:
        if not var.startswith(ENV_PREFIX) or var in RESERVED_ENV:
            continue
        top = var[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if top not in fields:
            # "SCELMO_AGGREGATE_METHOD": a section and its field joined by one underscore
            section = next((f for f in sorted(fields, key=len, reverse=True) if top.startswith(f + "_")), None)
            if section is not None:
                hint = f" Nested settings take two underscores: SCELMO_{section.upper()}__{top[len(section) + 1:].upper()}."
            else:  # a setting, or one of the process-level variables (SCELMO_STRICT_PLUGINS)
                whole = var[len(ENV_PREFIX):].lower()
                names = sorted(fields) + sorted(r[len(ENV_PREFIX):].lower() for r in RESERVED_ENV)
                close = difflib.get_close_matches(whole, names, n=1) or difflib.get_close_matches(top, names, n=1)
                hint = f" Did you mean SCELMO_{close[0].upper()}?" if close else ""
            raise ConfigError(f"Unknown setting in environment variable {var}.{hint}")


def _nest(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Turn ``{"aggregate.method": "aa"}`` into ``{"aggregate": {"method": "aa"}}``."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Conflicting settings for {key!r}.")
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = dict(value) if isinstance(value, Mapping) else value
    return out


def get_settings(config: ScelmoSettings | Mapping[str, Any] | None = None, /, **overrides: Any) -> ScelmoSettings:
    """Resolve the configuration.

    Parameters
    ----------
    config
        A ready :class:`ScelmoSettings` (returned as is, updated by ``overrides``) or a
        mapping of keyword overrides (dotted keys allowed: ``{"aggregate.method": "aa"}``).
    **overrides
        Highest-precedence values.
    """
    if isinstance(config, ScelmoSettings):
        if not overrides:
            return config
        nested = _nest(overrides)
        merged = _merge_roles(config.model_dump(exclude_unset=False), nested)
        return _carry_fields_set(_build(merged), config, nested)
    values = _nest(dict(config or {}))
    values = _deep_merge(values, _nest(overrides))
    return _build(values)


def _carry_fields_set(new: BaseModel, old: BaseModel, overrides: Mapping[str, Any]) -> Any:
    """``new`` (rebuilt from ``old``'s every value plus ``overrides``) marked as set only where
    ``old`` was or an override is: a default stays a default (an explicit
    ``aggregate.n_top_genes`` selects over ``var["highly_variable"]``, the default does not)."""
    new.__pydantic_fields_set__ = set(old.model_fields_set) | {k for k in overrides if k in type(new).model_fields}
    for name in type(new).model_fields:
        a, b = getattr(new, name), getattr(old, name, None)
        if isinstance(a, BaseModel) and type(a) is type(b):
            sub = overrides.get(name)
            _carry_fields_set(a, b, sub if isinstance(sub, Mapping) else {})
    return new


def _build(values: dict[str, Any]) -> ScelmoSettings:
    _check_env()
    try:
        return ScelmoSettings(**values)
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors())
        used = [f for f in _config_files() if f.is_file()]
        with contextlib.suppress(ConfigError):  # (an unknown profile is said elsewhere)
            used.append(_profile_file(_selected_profile(lambda: values, used)))  # type: ignore[arg-type]
        files = ", ".join(str(f) for f in used) or "no config files"
        raise ConfigError(
            f"Invalid scelmo configuration: {problems}. (Sources: keyword arguments or --set, "
            f"SCELMO_* environment variables, {files}.) Run `scelmo config show` to inspect it."
        ) from None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The setting names allowed where ``loc`` (a pydantic error location) points."""
    model: Any = ScelmoSettings
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return sorted(getattr(model, "model_fields", {}))


def _problem(err: Any) -> str:
    """One validation problem, with a "did you mean" for a misspelt key."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "<settings>"
    text = f"{where}: {err['msg']}"
    if err.get("type") == "extra_forbidden" and loc:
        prefix = ".".join(str(p) for p in loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=2, cutoff=0.6)
        if close:
            text += " (did you mean " + " or ".join(f"{prefix + '.' if prefix else ''}{c}" for c in close) + "?)"
    return text


def layers(overrides: Mapping[str, Any] | None = None) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """The raw configuration layers, highest precedence first, and the problems reading them.

    Each layer is ``(where, nested values)``: ``"--set"`` (``overrides``), ``"env"``
    (``SCELMO_*`` variables), the project file (``./scelmo.toml`` or ``SCELMO_CONFIG_FILE``),
    the user config file and the profile. Nothing is validated, so this works on a
    configuration that :func:`get_settings` rejects (``scelmo config show`` uses it).
    """
    out: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    try:
        out.append(("--set", _nest(dict(overrides or {}))))
    except ConfigError as exc:
        problems.append(str(exc))
    env: dict[str, Any] = {}
    for var, value in os.environ.items():
        if var.startswith(ENV_PREFIX) and var not in RESERVED_ENV:
            env[".".join(var[len(ENV_PREFIX):].lower().split("__"))] = value
    try:
        out.append(("env", _nest(env)))
    except ConfigError as exc:
        problems.append(str(exc))
    try:
        files = _config_files()
    except ConfigError as exc:
        problems.append(str(exc))
        files = [user_config_dir() / "config.toml"]
    project = os.environ.get("SCELMO_CONFIG_FILE")
    for i, f in enumerate(files):
        label = ("./scelmo.toml" if not project else f"config file {f}") if i == 0 and len(files) == 2 \
            else f"user config {f}"
        if f.is_file():
            try:
                out.append((label, _read_toml(f)))
            except ConfigError as exc:
                problems.append(str(exc))
    merged_profile = next((d["profile"] for _, d in out if isinstance(d.get("profile"), str)), "default")
    try:
        prof = _profile_file(merged_profile)
        out.append((f"profile {merged_profile}", _read_toml(prof)))
    except ConfigError as exc:
        problems.append(str(exc))
    return out, problems


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def origins(data: Mapping[str, Any], config_layers: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """Where each (dotted) value of ``data`` came from: the first layer setting it, else ``"default"``."""
    flats = [(where, _flatten(values)) for where, values in config_layers]
    out: dict[str, str] = {}
    for dotted in _flatten(data):
        parts = dotted.split(".")
        ancestors = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        out[dotted] = next((where for where, flat in flats if ancestors & set(flat)), "default")
    return out


def unvalidated(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The defaults overlaid with every layer, without validation (for debugging a bad config)."""
    config_layers, _ = layers(overrides)
    merged = ScelmoSettings.model_construct().model_dump(mode="json")
    for _, values in reversed(config_layers):
        merged = _deep_merge(merged, values)
    return merged


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def show(settings: ScelmoSettings | None = None) -> dict[str, Any]:
    """The resolved configuration as plain data, with every secret masked (keys, URL credentials)."""

    s = settings if settings is not None else get_settings()
    return mask(s.model_dump(mode="json"))
