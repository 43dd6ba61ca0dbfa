"""The ``scelmo`` command line: a thin layer over the Python API.

Errors raised on purpose (:class:`~scelmo.errors.ScelmoError`) print one line and exit
with a non-zero code; output files are written atomically; long work shows progress
bars on stderr. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import click

from scelmo import config, io, keys, tl
from scelmo import plugin as plugins
from scelmo.config import get_settings
from scelmo.demo import run_demo
from scelmo.errors import ConfigError, DiskFullError, InputError, ProviderError, ScelmoError
from scelmo.expression import distributed
from scelmo.genes import GeneEmbeddings
from scelmo.io import _rds as rio
from scelmo.io import atomic_path, check_writable, is_disk_full
from scelmo.knowledge import descriptions, roles
from scelmo.llm.cache import Cache, CacheDamagedError, reset_cache_file
from scelmo.progress import progress_enabled
from scelmo.redact import mask

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the backport (a dependency there)
    import tomli as tomllib


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _overrides(ctx: click.Context) -> dict[str, Any]:
    return dict(ctx.obj or {})


#: Warnings raised from files under this folder are scelmo's own.
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _echo_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """Warnings as one yellow line each, Python keywords named as the running command's flags
    (:func:`cli_message`); other packages' deprecation notices (meant for their developers,
    e.g. anndata's about pandas 3 options) are not shown to command-line users."""
    deprecation = issubclass(category, DeprecationWarning | PendingDeprecationWarning)
    if deprecation and _PACKAGE_DIR not in str(Path(filename).resolve()):
        return
    text = str(message)
    ctx = click.get_current_context(silent=True)  # (None outside a command, or in another thread)
    if ctx is not None:
        commands: list[click.Command] = []
        while ctx is not None:
            commands.append(ctx.command)
            ctx = ctx.parent
        text = cli_message(text, commands)
    click.secho(f"Warning: {mask(text)}", fg="yellow", err=True)


#: Python keyword names whose CLI option has another name.
_KEYWORD_ALIASES = {"l2_normalize": "l2", "describe": "describe_model", "embed": "embed_model", "config": "sets",
                    "aggregate.method": "aggregator", "key": "key_added"}
#: Keywords that name an option of another command than the running one (e.g. ``head=`` in a
#: message of ``predict``: a model is trained with a head), by that command's name.
_KEYWORD_ELSEWHERE = {"head": "train", "method": "predict"}
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_KEYWORD = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<eq>=(?P<value>.*))?$")
#: ``name='value'`` / ``name="value"`` / ``name=True`` written outside a code span.
_BARE_KEYWORD = re.compile(r"(?<![\w.\[(`=-])(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>'[^'\n]*'|\"[^\"\n]*\"|True\b|False\b)")
#: A flag followed by the same option in Python words: ``--overwrite (overwrite=True)``.
_FLAG_THEN_KEYWORD = re.compile(r"(?P<flag>`?(?P<long>--[A-Za-z0-9-]+)`?) \((?P<name>[A-Za-z_][A-Za-z0-9_]*)=[^()]*\)")


def _flags(commands: list[click.Command]) -> dict[str, click.Option]:
    """Python keyword (parameter) name -> the click option, for the commands in play."""
    out: dict[str, click.Option] = {}
    for cmd in commands:
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name:
                out.setdefault(param.name, param)
    for keyword, name in _KEYWORD_ALIASES.items():
        if name in out:
            out.setdefault(keyword, out[name])
    return out


def _head_option_names() -> set[str]:
    """Options of the registered task heads (set with ``--option KEY=VALUE`` by ``scelmo train``)."""
    names: set[str] = set()
    for entry in plugins.heads.entries():
        fields = getattr(getattr(entry.obj, "Options", None), "model_fields", None)
        if isinstance(fields, dict):
            names.update(fields)
    return names


def _render_option(opt: click.Option, value: str | None, prefix: str = "") -> str:
    """``--flag value`` for ``opt`` (``value`` ``None``: the flag alone), in a code span."""
    long = max(opt.opts, key=len)
    if value is None or value in ("", "...", "…"):
        return f"`{prefix}{long}`"
    if opt.is_flag or opt.secondary_opts:
        if value == "True":
            return f"`{prefix}{long}`"
        if value == "False":
            return f"`{prefix}{max(opt.secondary_opts, key=len)}`" if opt.secondary_opts else f"no `{prefix}{long}`"
    if value == "None":
        return f"no `{prefix}{long}`"
    return f"`{prefix}{long} {value}`"


def cli_message(message: str, commands: list[click.Command]) -> str:
    """``message`` with Python keywords named as the command's flags.

    In code spans: ```layer=None``` -> no ```--layer```, ```use_raw=True``` -> ```--use-raw```,
    ```mask_var=``` -> ```--mask-var```, ```labels_key="x"``` -> ```--labels-key x```. Outside
    them, a keyword with a quoted value (``device='cuda'``) -> ```--device cuda```, and
    ``--overwrite (overwrite=True)`` -> ``--overwrite``. A keyword of another command
    (``head=``, ``method=``: :data:`_KEYWORD_ELSEWHERE`) -> ```scelmo train --head ...```;
    a task head's option where the command has ``--option`` -> ```--option knn_k=...```.
    Spans naming no option are left as they are.

    Parameters
    ----------
    message
        The message (of an error or a warning).
    commands
        The running command, then the groups above it (the root group last).

    Returns
    -------
    The message in command-line words.
    """
    flags = _flags(commands)
    root = next((c for c in reversed(commands) if isinstance(c, click.Group)), None)
    head_options = "options" in flags  # (`scelmo train --option KEY=VALUE`)

    def option_for(name: str) -> tuple[click.Option, str] | None:
        if name in flags:
            return flags[name], ""
        other = _KEYWORD_ELSEWHERE.get(name)
        cmd = root.commands.get(other) if root is not None and other else None
        if cmd is not None and cmd not in commands:
            opt = _flags([cmd]).get(name)
            if opt is not None:
                return opt, f"scelmo {other} "
        return None

    def one(m: re.Match[str]) -> str:
        k = _KEYWORD.match(m.group(1).strip())
        if k is None:
            return m.group(0)
        found = option_for(k.group("name"))
        value = (k.group("value") or "").strip().strip("\"'") if k.group("eq") else None
        if found is None:
            if head_options and k.group("name") in _head_option_names():
                return f"`--option {k.group('name')}={value if value not in (None, '', '...', '…') else '...'}`"
            return m.group(0)
        return _render_option(found[0], value, found[1])

    def bare(m: re.Match[str]) -> str:
        before = m.string[:m.start()]
        call = before.rfind("(")
        if call > before.rfind(")") and call > 0 and (before[call - 1].isalnum() or before[call - 1] == "_"):
            return m.group(0)  # an argument in a Python call written out: `f(a, head='x')`
        found = option_for(m.group("name"))
        if found is None:
            return m.group(0)
        return _render_option(found[0], m.group("value").strip("\"'"), found[1])

    def duplicate(m: re.Match[str]) -> str:
        opt = flags.get(m.group("name"))
        return m.group("flag") if opt is not None and max(opt.opts, key=len) == m.group("long") else m.group(0)

    message = _FLAG_THEN_KEYWORD.sub(duplicate, message)
    parts = _CODE_SPAN.split(message)  # even: plain text, odd: the inside of a code span
    return "".join(_BARE_KEYWORD.sub(bare, part) if i % 2 == 0 else _CODE_SPAN.sub(one, f"`{part}`")
                   for i, part in enumerate(parts))


class _Group(click.Group):
    """Maps ScelmoError to a one-line message (Python keywords named as CLI flags) and its exit code.

    Exit codes: 0 success, 1 general error, 2 configuration error (also bad command-line
    usage), 3 input data or files, 4 cost limit reached, 5 a provider failed.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:  # a full disk or a refused write anywhere else: one line, not a traceback
            if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                where = f" {exc.filename}" if exc.filename else ""
                click.secho(f"Error: cannot write{where}: {exc.strerror or exc}. Choose a writable output path.",
                            fg="red", err=True)
                ctx.exit(InputError.exit_code)
            if not is_disk_full(exc):
                raise
            _exit_disk_full(DiskFullError())
        except ScelmoError as exc:
            if isinstance(exc, DiskFullError):
                _exit_disk_full(exc)
            sub = ctx.invoked_subcommand
            cmd = self.get_command(ctx, sub) if sub else None
            commands: list[click.Command] = [cmd] if cmd is not None else []
            if isinstance(cmd, click.Group):
                commands += list(cmd.commands.values())
            commands.append(self)
            click.secho(f"Error: {mask(cli_message(str(exc), commands))}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _exit_disk_full(exc: DiskFullError) -> None:
    """Report a full disk in one line and leave at once (exit code 3).

    The partial output is already removed. The interpreter is not shut down normally:
    after an HDF5 write failed on a full disk, h5py can crash while freeing the file's
    objects at exit (a segmentation fault instead of the exit code).
    """
    click.secho(f"Error: {exc}", fg="red", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exc.exit_code)


def _quiet_disk_full_unraisable(unraisable: Any) -> None:
    """Drop the 'Exception ignored' tracebacks h5py prints while freeing objects of a file
    whose write failed on a full disk (the error itself is reported once, in one line)."""

    if is_disk_full(getattr(unraisable, "exc_value", None)):
        return
    sys.__unraisablehook__(unraisable)


def _quiet_disk_full_excepthook(exc_type: Any, exc: BaseException, tb: Any) -> None:
    """The same for the traceback Cython prints (through ``sys.excepthook``) before it."""

    if is_disk_full(exc):
        return
    sys.__excepthook__(exc_type, exc, tb)


@click.group(cls=_Group)
@click.version_option(package_name="scelmo")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML config file (instead of ./scelmo.toml).")
@click.option("--profile", help="Named profile (e.g. default, offline).")
@click.option("--offline", is_flag=True, default=None, help="Refuse any network role.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting, e.g. --set aggregate.method=aa.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, profile: str | None, offline: bool | None, sets: tuple[str, ...], no_progress: bool) -> None:
    """scelmo: single-cell embeddings from language models."""
    warnings.showwarning = _echo_warning
    sys.unraisablehook = _quiet_disk_full_unraisable
    sys.excepthook = _quiet_disk_full_excepthook
    if config_file:
        os.environ["SCELMO_CONFIG_FILE"] = str(Path(config_file).resolve())
    if no_progress:
        os.environ["SCELMO_NO_PROGRESS"] = "1"
    overrides: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        overrides[key.strip()] = _parse_value(value.strip())
    if profile:
        overrides["profile"] = profile
    if offline:
        overrides["offline"] = True
    ctx.obj = overrides


# --------------------------------------------------------------------------- embedding
_INPUT_HELP = ".h5ad, .zarr, 10x .h5, a 10x .mtx directory, or .rds (with scelmo[r])"
#: OUTPUT formats of embed-cells, by extension.
_OUTPUT_FORMATS = {".h5ad": "AnnData HDF5", ".zarr": "AnnData zarr store", ".rds": "R object (with scelmo[r])"}


def _is_rds(path: str) -> bool:
    return Path(path).suffix.lower() == ".rds"


def _read_input(path: str, backed: bool = False) -> Any:
    """Read INPUT in any supported format (one reader for every command)."""

    return io.read_input(path, backed=backed)


def _summary(info: dict) -> str:
    """What an ``embed_cells`` run did, from its provenance, for the closing line."""
    return (f"{info['n_cells']} cells (d={info['dim']}, {info['aggregator']}, {info['flavor']} flavor, "
            f"{info['n_genes_used']} of {info['n_genes']} genes used; the genes with a vector carry "
            f"{info['expression_coverage']:.1%} of the expression)")


def _settings(ctx: click.Context) -> Any:
    """Resolve (and so validate) the configuration before any expensive work."""

    settings = get_settings(_overrides(ctx))
    plugins.check_strict(settings)
    return settings


def _embed_cells_distributed(input: str, output: str, fmt: str, key: str, *, scheduler: str | None,
                             workers: int | None, overwrite: bool, layer: str | None, use_raw: bool | None,
                             chunk_size: int, options: dict[str, Any]) -> None:
    """``embed-cells --scheduler/--workers``: blocks of INPUT on dask workers, OUTPUT written block by block."""

    t0 = time.perf_counter()
    say = progress_enabled(None)  # (stages with no bar of their own: a trial saw nothing for 24 s of 32)

    def stage(text: str) -> None:
        if say:
            click.echo(f"[{time.perf_counter() - t0:5.1f} s] {text}", err=True)

    stage(f"connecting to the dask scheduler at {scheduler}" if scheduler else f"starting {workers} dask workers")
    with distributed.cluster(scheduler, workers) as client:
        n_workers = len(client.scheduler_info().get("workers", {}))
        lazy = distributed.read_lazy(input, layer=layer, use_raw=use_raw, chunk_size=chunk_size)
        stage(f"copying INPUT to OUTPUT's temporary ({fmt}), then gene statistics and aggregation on the workers")
        copy = io.streamed_h5ad_copy(input, output) if fmt == "h5ad" else io.streamed_zarr_copy(
            input, output, overwrite=overwrite)
        with copy as dest:
            tl.embed_cells(lazy, out=dest.obsm(key, lazy.n_obs), key_added=key, **options)
            dest.write_results(lazy)
    info = lazy.uns[keys.PROVENANCE]["embed_cells"]
    where = f"dask cluster at {scheduler}" if scheduler else "local dask cluster"
    click.echo(
        f"Embedded {_summary(info)} on {n_workers} dask workers ({where}) in {time.perf_counter() - t0:.1f} s "
        f"-> {output}"
    )


def _backed_layer(path: str, layer: str) -> tuple[Any, Any] | None:
    """``(adata, h5 file)`` whose ``X`` is ``layers/<layer>`` of the ``.h5ad`` at ``path`` (sparse or
    dense), read by rows on demand (anndata's backed mode reads every layer into memory: a trial
    saw the peak grow with the cells), with the file's ``obs``, ``var``, ``varm`` and
    ``uns["scelmo"]``; ``None`` where the file has no such layer on disk."""
    import anndata as ad
    import h5py
    from anndata.io import read_elem, sparse_dataset

    h5 = h5py.File(path, "r")
    try:
        elem = h5["layers"][layer] if "layers" in h5 and layer in h5["layers"] else None
        encoding = str(elem.attrs.get("encoding-type", "")) if elem is not None else ""
        if encoding not in ("csr_matrix", "csc_matrix", "array") or (encoding == "array" and elem.ndim != 2):
            h5.close()
            return None
        # (a dense layer is an h5py dataset, read by row blocks as backed X is)
        matrix = sparse_dataset(elem) if encoding != "array" else elem
        adata = ad.AnnData(X=matrix, obs=read_elem(h5["obs"]), var=read_elem(h5["var"]))
        for key, value in (read_elem(h5["varm"]) if "varm" in h5 else {}).items():
            adata.varm[key] = value
        if "uns" in h5 and keys.PROVENANCE in h5["uns"]:  # (earlier steps' records, kept beside the new one)
            adata.uns[keys.PROVENANCE] = read_elem(h5["uns"][keys.PROVENANCE])
        adata.uns[distributed.LAZY_SOURCE] = f"layers[{layer!r}]"  # (what the provenance names as read)
    except Exception:
        h5.close()
        raise
    return adata, h5


def _check_output_format(output: str, backed: bool) -> None:
    suffix = Path(output).suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        allowed = ", ".join(f"{k} ({v})" for k, v in _OUTPUT_FORMATS.items())
        raise InputError(f"Cannot write OUTPUT {output}: the format follows the extension; use {allowed}.")
    if backed and suffix != ".h5ad":
        raise InputError(f"--backed writes an .h5ad copy of INPUT; give -o/--output ending in .h5ad, not {output}.")


@cli.command("embed-genes")
@click.argument("input", required=False, type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the GeneEmbeddings.")
@click.option("--genes", "gene_list", multiple=True, help="Gene names (repeatable), instead of / besides INPUT.")
@click.option("--genes-file", type=click.Path(dir_okay=False, exists=True),
              help="File with one gene name per line (.csv/.tsv: the first column; a first line such as 'gene' or "
                   "'symbol' is a header).")
@click.option("--describe-model", help="Model for the describe role (overrides config).")
@click.option("--embed-model", help="Model for the embed role (overrides config).")
@click.option("--species", type=click.Choice(["auto", "human", "mouse"]))
@click.option("--prompt", help="Prompt name when the describe model is an LLM (default: gene, the paper's).")
@click.option("--max-cost", type=float, help="Stop before spending more than this many USD (remote models).")
@click.option("--dry-run", is_flag=True, help="Print the calls, tokens and cost it would take; send nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.pass_context
def embed_genes_cmd(ctx, input, output, gene_list, genes_file, describe_model, embed_model, species, prompt,
                    max_cost, dry_run, overwrite):
    """Describe and embed genes (from INPUT's var_names and/or --genes) into OUTPUT.

    INPUT: .h5ad, .zarr, 10x .h5, a 10x .mtx directory, or .rds (with scelmo[r]).
    """

    genes = list(gene_list)
    if genes_file:  # read as `describe --from` reads a list
        genes += _read_list_file(Path(genes_file), None)
    genes = list(dict.fromkeys(genes))  # a gene given twice (--genes and the file) is one gene to embed
    if input is None and not genes:
        raise click.UsageError(f"Give an INPUT ({_INPUT_HELP}), --genes or --genes-file.")
    # before any gene is embedded (a dry run writes nothing, so an existing OUTPUT is fine)
    out = Path(output) if dry_run else io.check_output_dir(output, overwrite=overwrite, marker="manifest.json")
    if max_cost is not None and max_cost < 0:
        raise click.UsageError("--max-cost must be >= 0.")
    _settings(ctx)
    adata = _read_input(input, backed=Path(input).suffix.lower() == ".h5ad") if input else None  # var_names only
    if dry_run:
        for est in tl.estimate_embed_genes(
            adata, genes, describe=describe_model, embed=embed_model, species=species, prompt=prompt,
            config=_overrides(ctx),
        ):
            _echo_estimate(est)
        return
    ge = tl.embed_genes(
        adata, genes, describe=describe_model, embed=embed_model, species=species, prompt=prompt,
        max_cost=max_cost, config=_overrides(ctx),
    )
    ge.save(out, overwrite=overwrite)
    click.echo(f"Wrote {len(ge)} gene vectors (d={ge.dim}, {ge.manifest.get('embed_model')}) to {out}")
    if adata is not None and keys.HAS_EMBEDDING in adata.var:  # say which of INPUT's genes got none
        has = adata.var[keys.HAS_EMBEDDING].to_numpy(dtype=bool)
        if not has.all():
            missing = [str(g) for g in adata.var_names[~has]]
            click.echo(f"{len(missing)} of INPUT's {has.size} genes have no vector (e.g. {', '.join(missing[:5])}): "
                       "not a known gene symbol or Ensembl ID, or no description in the knowledge source.")
    vocab = roles.vocabulary() if genes else None
    if vocab is not None:  # names given one by one: say which ones no vector was made for
        res = vocab.resolve(list(genes), species=species or "auto")
        unknown = [n for n, sym in zip(res.names, res.symbols, strict=True) if sym is None]
        if unknown:
            click.echo(f"{len(unknown)} of the {len(res.names)} names given are not known genes and got no vector: "
                       f"{', '.join(unknown[:10])}{', ...' if len(unknown) > 10 else ''}.", err=True)


@cli.command("embed-cells")
@click.argument("input", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .h5ad, .zarr (or .rds with scelmo[r]).")
@click.option("--gene-embeddings", type=click.Path(file_okay=False, exists=True), help="Saved GeneEmbeddings directory.")
@click.option("--aggregator", help="wa (default), aa, or a plugin's aggregator.")
@click.option("--flavor", type=click.Choice(["scelmo", "paper"]),
              help="scelmo (default: HVGs of log-normalised data, centred, conditioned vectors) or paper (the paper's formula).")
@click.option("--n-top-genes", type=click.IntRange(min=1), help="Highly variable genes to use (default 2000).")
@click.option("--mask-var", help="Boolean var column choosing the genes (default: var['highly_variable'] if present).")
@click.option("--transform", type=click.Choice(["center", "scale", "none"]), help="Per-gene transform (default: center).")
@click.option("--layer", help="Layer with expression values (default: raw if present, else X).")
@click.option("--use-raw/--no-use-raw", default=None, help="Use adata.raw (default: when present).")
@click.option("--l2/--no-l2", "l2", default=None, help="L2-normalise cell vectors.")
@click.option("--chunk-size", type=click.IntRange(min=1), help="Cells per chunk.")
@click.option("--species", type=click.Choice(["auto", "human", "mouse"]))
@click.option("--key-added", default=None, help="obsm key (default X_scelmo).")
@click.option("--backed", is_flag=True, help="Stream an .h5ad INPUT's X (or sparse --layer) from disk (bounded memory); OUTPUT "
              "is a copy with the results added. A dense --layer is read into memory: --workers streams it.")
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]),
              help="Gene vectors while aggregating (bfloat16: half the memory, float32 sums).")
@click.option("--scheduler", metavar="ADDRESS", help="Run on an existing dask.distributed cluster (e.g. tcp://host:8786); "
              "INPUT .h5ad/.zarr is read in blocks by the workers, OUTPUT (same format) written block by block.")
@click.option("--workers", type=click.IntRange(min=1), help="Run on a local dask cluster of N worker processes (as --scheduler).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.pass_context
def embed_cells_cmd(ctx, input, output, gene_embeddings, aggregator, flavor, n_top_genes, mask_var, transform, layer,
                    use_raw, l2, chunk_size, species, key_added, backed, precision, scheduler, workers, overwrite):
    """Embed the cells of INPUT and write OUTPUT (.h5ad) with obsm["X_scelmo"].

    INPUT: .h5ad, .zarr, 10x .h5, a 10x .mtx directory, or .rds. With the scelmo[r]
    extra, INPUT and OUTPUT may be .rds files (Seurat or SingleCellExperiment); an .rds
    OUTPUT is the input object plus a "scelmo" reduction.
    """

    # every option is checked before the input is read or anything is embedded
    _check_output_format(output, backed)
    if Path(output).suffix.lower() == ".zarr":  # a zarr store is a directory (replaced whole, if it is one)
        io.check_output_dir(output, overwrite=overwrite, marker=io.ZARR_MARKERS)
        probe = Path(output).with_name(f".{Path(output).name}.probe")  # (the store is written beside OUTPUT)
        try:
            io.check_writable(probe, overwrite=True)
        except InputError as exc:  # name OUTPUT, not the probe
            raise InputError(str(exc).replace(str(probe), str(output))) from None
    else:
        io.check_writable(output, overwrite=overwrite)
    if not Path(input).exists():
        raise InputError(f"Input {input} does not exist.")
    if Path(output).resolve() == Path(input).resolve():
        raise InputError("OUTPUT must differ from INPUT (the input is never modified).")
    fmt = io.input_format(input)
    if backed and fmt != "h5ad":
        raise InputError(f"--backed needs an .h5ad INPUT; {input} is read into memory. Drop --backed.")
    distributed_run = bool(scheduler or workers)
    if distributed_run:
        if scheduler and workers:
            raise click.UsageError("Give --scheduler (an existing cluster) or --workers (a local one), not both.")
        if backed:
            raise InputError("--scheduler/--workers already stream INPUT from disk; drop --backed.")
        if fmt not in ("h5ad", "zarr") or Path(output).suffix.lower() != f".{fmt}":
            raise InputError(f"--scheduler/--workers read an .h5ad or .zarr INPUT and write OUTPUT in the same "
                             f"format (a copy with the results added); got {input} -> {output}.")
    if layer and use_raw:
        raise click.UsageError("Give --layer or --use-raw, not both.")
    settings = _settings(ctx)
    if aggregator:
        plugins.aggregators.entry(aggregator)  # unknown names fail now, with a suggestion

    if gene_embeddings:
        gene_embeddings = GeneEmbeddings.load(gene_embeddings)
    key = key_added or keys.X_SCELMO
    if distributed_run:
        _embed_cells_distributed(input, output, fmt, key, scheduler=scheduler, workers=workers, overwrite=overwrite,
                                 layer=layer, use_raw=use_raw, chunk_size=chunk_size or settings.aggregate.chunk_size,
                                 options=dict(gene_embeddings=gene_embeddings, aggregator=aggregator, flavor=flavor,
                                              n_top_genes=n_top_genes, mask_var=mask_var, transform=transform,
                                              l2_normalize=l2, species=species, precision=precision, config=settings))
        return
    streamed_layer = _backed_layer(input, layer) if backed and layer else None
    h5 = None
    if streamed_layer is not None:  # the layer streams from disk like X
        adata, h5 = streamed_layer
        layer = None
    else:
        adata = _read_input(input, backed=backed)
    if layer and layer not in adata.layers:
        raise InputError(f"INPUT has no layer {layer!r}; layers: {', '.join(map(str, adata.layers)) or 'none'}.")
    if mask_var and mask_var not in adata.var:
        raise InputError(f"INPUT has no var column {mask_var!r} for --mask-var; "
                         f"columns: {', '.join(map(str, adata.var.columns[:20])) or 'none'}.")
    options = dict(
        gene_embeddings=gene_embeddings, aggregator=aggregator, flavor=flavor, n_top_genes=n_top_genes,
        mask_var=mask_var, transform=transform, layer=layer, use_raw=use_raw,
        l2_normalize=l2, chunk_size=chunk_size, species=species, precision=precision, config=settings, key_added=key,
    )
    t0 = time.perf_counter()
    if backed:  # stream rows in and cell vectors out: memory independent of the number of cells
        try:
            with io.streamed_h5ad_copy(input, output) as dest:
                tl.embed_cells(adata, out=dest.obsm(key, adata.n_obs), **options)
                dest.write_results(adata)
        finally:
            (h5 if h5 is not None else adata.file).close()
    else:
        tl.embed_cells(adata, **options)
        if _is_rds(output):  # the input object plus a "scelmo" DimReduc / reducedDim

            rio.write_rds(adata, output, template=input if fmt == "rds" else None, obsm_key=key)
        elif Path(output).suffix.lower() == ".zarr":
            io.write_zarr(adata, output, overwrite=overwrite)
        else:
            io.write_h5ad(adata, output)
    elapsed = time.perf_counter() - t0
    info = adata.uns[keys.PROVENANCE]["embed_cells"]
    click.echo(
        f"Embedded {_summary(info)} in {elapsed:.1f} s -> {output}"
    )


# --------------------------------------------------------------------------- plugins
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List loaded plugins, where they come from, and what they provide."""

    rows = []
    for info in plugins.plugin_infos():
        provides = {
            kind: [e.name for e in reg.entries() if e.plugin == info.name]
            for kind, reg in plugins.REGISTRIES.items()
        }
        provides["command"] = plugins.plugin_commands(info.name)
        rows.append({
            "plugin": info.name, "distribution": info.distribution, "version": info.version,
            "module": info.module, "error": info.error,
            "provides": {k: v for k, v in provides.items() if v},
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="scelmo plugins")
    for col in ("plugin", "distribution", "provides", "status"):
        table.add_column(col)
    for r in rows:
        provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in r["provides"].items()) or "-"
        dist = f"{r['distribution']} {r['version']}".strip()
        table.add_row(r["plugin"], dist, provides, f"[red]failed: {r['error']}[/red]" if r["error"] else "ok")
    Console().print(table)


# --------------------------------------------------------------------------- descriptions
_SUBJECT_CHOICES = ["genes", "cell-types", "drugs", "proteins"]


#: First-line values read as a column header (not a name) in a list file without --column
#: (compared in lower case, with spaces and dashes as underscores).
_HEADER_WORDS = frozenset({
    "gene", "genes", "symbol", "symbols", "gene_symbol", "gene_symbols", "genesymbol", "gene_name", "gene_names",
    "genename", "hgnc_symbol", "name", "names", "item", "items", "id", "ids", "gene_id", "gene_ids", "ensembl",
    "ensembl_id", "ensembl_gene_id", "feature", "features", "feature_name", "cell_type", "cell_types", "celltype",
    "drug", "drugs", "compound", "compounds", "protein", "proteins", "perturbation", "perturbations", "label",
    "labels",
})


def _is_header_word(value: Any) -> bool:
    return re.sub(r"[\s-]+", "_", str(value).strip().lower()) in _HEADER_WORDS


def _is_number(value: Any) -> bool:
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def _read_list_file(p: Path, column: str | None) -> list[str]:
    """Names from a .csv/.tsv/.txt list: ``column`` of a table with a header, else the first column.

    Without ``column``, in a .csv/.tsv the first line is a header only when it names a column
    (a cell such as ``gene``, ``symbol`` or ``name``), or, in a table of several columns,
    when it is text above a column of numbers (``hgnc_symbol,logFC``); otherwise it is read
    as a name, with a note saying so. Any other file is plain text, one name per line (a
    first line such as ``gene`` is a header there too). Blank lines and lines starting with
    ``#`` are skipped.
    """
    import pandas as pd

    suffix = p.suffix.lower()
    sep = "," if suffix == ".csv" else "\t"
    try:
        table = pd.read_csv(p, sep=sep, header=0 if column else None, dtype=str) \
            if column or suffix in (".csv", ".tsv") else None
    except pd.errors.EmptyDataError:
        return []
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {p} as a {'comma' if sep == ',' else 'tab'}-separated list: "
                         f"{str(exc).strip()}. Give one name per line (or a table with --column).") from None
    if column:
        assert table is not None
        if column not in table:
            raise InputError(f"{p} has no column {column!r}; columns: {', '.join(map(str, table.columns))}. "
                             "Give --column with one of them (or leave it out to read the first column).")
        return [str(v).strip() for v in table[column].dropna() if str(v).strip()]
    if table is None:  # plain text: one name per line
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"Cannot read {p} as UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8, "
                             "one name per line.") from None
        rows = [[line.strip()] for line in text.splitlines() if line.strip() and not line.startswith("#")]
    else:
        rows = [list(r) for r in table.itertuples(index=False) if not str(r[0]).startswith("#")]
    if not rows:
        return []
    first = rows[0]
    header = any(_is_header_word(v) for v in first if isinstance(v, str))
    for j in range(1, len(first)):  # several columns: text above a column of numbers is a header
        below = [r[j] for r in rows[1:] if isinstance(r[j], str)]
        if not header and isinstance(first[j], str) and not _is_number(first[j]) and below \
                and all(_is_number(v) for v in below):
            header = True
    if not header and table is not None:  # (a table's header the rules above do not know is read as a name: say so)
        click.secho(f"Note: {p.name} has no header line that scelmo recognises, so its first line "
                    f"({str(first[0]).strip()!r}) is read as a name; if it is a column header, pass --column "
                    f"{str(first[0]).strip()}.", fg="yellow", err=True)
    return [str(r[0]).strip() for r in rows[1 if header else 0:] if isinstance(r[0], str) and r[0].strip()]


def _read_items(items: tuple[str, ...], from_file: str | None, column: str | None) -> list[str]:
    """Names from arguments and/or a file: .h5ad (var_names, or an obs column's categories),
    .csv/.tsv (a column, default the first) or plain text (one per line); see :func:`_read_list_file`."""
    out = [i for i in items if i.strip()]
    if from_file:
        p = Path(from_file)
        suffix = p.suffix.lower()
        if suffix in (".h5ad", ".rds", ".zarr", ".h5") or p.is_dir() or p.name.lower().endswith((".mtx", ".mtx.gz")):
            adata = _read_input(from_file, backed=suffix == ".h5ad")
            if column:
                if column not in adata.obs:
                    raise InputError(f"{from_file} has no obs column {column!r}; "
                                     f"columns: {', '.join(map(str, adata.obs.columns[:20]))}.")
                out += sorted({str(v) for v in adata.obs[column].dropna().unique()})
            else:
                out += [str(g) for g in adata.var_names]
        else:
            out += _read_list_file(p, column)
    if not out:
        raise InputError("Nothing to describe: give names as arguments or --from FILE.")
    return out


def _write_table(df: Any, output: str, overwrite: bool) -> None:
    check_writable(output, overwrite=overwrite)
    sep = "," if Path(output).suffix.lower() == ".csv" else "\t"
    with atomic_path(output) as tmp:
        df.to_csv(tmp, sep=sep, index=False)


def _echo_estimate(est: Any) -> None:
    d = est.as_dict()
    cost = "unknown" if d["cost_usd"] is None else f"${d['cost_usd']:.4f}"
    click.echo(
        f"{d['role']}: {d['model']}: {d['items']} items, {d['cached']} cached -> {d['calls']} calls, "
        f"~{d['prompt_tokens']:,} prompt + ~{d['completion_tokens']:,} completion tokens, {cost}"
    )
    for note in d["notes"]:
        click.echo(f"  note: {note}")


@cli.command("describe")
@click.argument("subject", type=click.Choice(_SUBJECT_CHOICES))
@click.argument("items", nargs=-1)
@click.option("--from", "from_file", type=click.Path(exists=True),
              help="Names from a file: .h5ad/.zarr/10x/.rds (var_names, or --column of obs); .csv/.tsv/.txt: "
                   "--column of a table with a header, else the first column, one name per line (a first line "
                   "such as 'gene', 'symbol' or 'name' is taken as a header).")
@click.option("--column", help="Column holding the names (table files, or an obs column of an .h5ad).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Table to write (.tsv or .csv). Required unless --dry-run.")
@click.option("--model", help="Model for the describe role (overrides config), e.g. openai/gpt-4o-mini.")
@click.option("--prompt", help="Registered prompt name (default: the subject's; `scelmo plugins` lists them).")
@click.option("--concurrency", type=int, help="Requests in flight at once (describe.options.concurrency).")
@click.option("--species", type=click.Choice(["auto", "human", "mouse"]),
              help="How gene names are read by the offline table (genes.species; default auto, from the names).")
@click.option("--max-cost", type=float, help="Stop before spending more than this many USD.")
@click.option("--dry-run", is_flag=True, help="Print calls, tokens and cost; send nothing.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.pass_context
def describe_cmd(ctx, subject, items, from_file, column, output, model, prompt, concurrency, species, max_cost, dry_run,
                 overwrite):
    """Describe genes, cell types, drugs or proteins with the describe role's model.

    Answers are cached as they arrive: an interrupted run resumes where it stopped.
    """
    import pandas as pd

    overrides = _overrides(ctx)
    if model:
        overrides["describe.model"] = model
    if species:
        overrides["genes.species"] = species
    if concurrency is not None and concurrency < 1:
        raise click.UsageError("--concurrency must be at least 1.")
    if not dry_run:  # options first, before reading or describing anything
        if not output:
            raise click.UsageError("Give -o/--output TABLE.tsv (or --dry-run).")
        if Path(output).suffix.lower() not in (".tsv", ".csv", ".txt"):
            raise InputError(f"Cannot write {output}: the format follows the extension; use .tsv or .csv.")

        check_writable(output, overwrite=overwrite)
    settings = get_settings(overrides)
    if concurrency is not None:
        describer = roles.description_writer(settings)
        if isinstance(describer, plugins.KnowledgeSource):  # no calls to run at once: nothing to set
            click.echo(f"Note: --concurrency does not apply to the offline knowledge table {describer.name!r} "
                       "(it makes no calls); ignored.", err=True)
        else:
            overrides["describe.options.concurrency"] = concurrency
            settings = get_settings(overrides)
    names = _read_items(items, from_file, column)
    subj = descriptions.normalize_subject(subject)
    if dry_run:
        _echo_estimate(descriptions.estimate(names, subject=subj, prompt=prompt, config=settings))
        return
    with warnings.catch_warnings():  # the failures are listed below (and decide the exit code)
        warnings.filterwarnings("ignore", message=r".*descriptions failed and were left out.*")
        result = descriptions.describe(names, subject=subj, prompt=prompt, config=settings, max_cost=max_cost)
    if result.failed and not result.texts:
        _echo_failures(result)
        if len(result.unknown) == len(result.failed):  # the names, not the provider: a problem of the input
            raise InputError(
                f"All {len(result.failed)} descriptions failed: the knowledge table {result.model} knows none of the "
                f"names; nothing was written to {output}. Check that they are gene symbols, aliases or Ensembl IDs, "
                "or describe them with an LLM (e.g. `--model openai/gpt-4o-mini`).")
        raise ProviderError(f"All {len(result.failed)} descriptions failed; nothing was written to {output}. "
                            "Run again to retry them, or try another `--prompt` or `--model`.")
    p = result.prompt
    columns: dict[str, Any] = {"item": list(result.texts)}
    if result.symbols:  # a knowledge table's answers: the symbol each name was looked up under
        columns["symbol"] = [result.symbols.get(i, "") for i in result.texts]
    df = pd.DataFrame({
        **columns,
        "text": list(result.texts.values()),
        "model": result.model,
        "prompt": p.name if p else "",
        "prompt_version": p.version if p else "",
        "prompt_hash": p.hash if p else "",
    })
    _write_table(df, output, overwrite)
    u = result.usage
    cost = "unknown" if u.cost is None else f"${u.cost:.4f}"
    click.echo(
        f"Wrote {len(df)} descriptions to {output} ({result.cached} from the cache, {u.calls} calls, "
        f"{u.tokens:,} tokens, {cost}; {len(result.failed)} failed)."
    )
    if result.failed:
        _echo_failures(result)


def _echo_failures(result: Any, limit: int = 20) -> None:
    """List a describe run's failures on stderr: names the knowledge table does not know (asking
    again does not help) apart from failed answers (not cached: a new run asks again)."""
    unknown = {i: result.failed[i] for i in result.unknown if i in result.failed}
    failed = {i: why for i, why in result.failed.items() if i not in unknown}
    groups = (
        (unknown, f"{len(unknown)} failed: unknown to the knowledge table {result.model} (check the names, or "
                  "describe them with an LLM: --model):"),
        (failed, f"{len(failed)} failed (not cached; run again to retry them):"),
    )
    for items, title in groups:
        if not items:
            continue
        click.secho(title, fg="yellow", err=True)
        for item, problem in list(items.items())[:limit]:
            click.echo(f"  {item}: {mask(str(problem))}", err=True)
        if len(items) > limit:
            click.echo(f"  ... and {len(items) - limit} more", err=True)


# --------------------------------------------------------------------------- config
@cli.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the resolved configuration (secrets masked), where each value came from
    (default, profile, user config, ./scelmo.toml, env, --set) and where roles resolve to.

    An invalid configuration is printed as far as it can be read, followed by the
    validation error (exit code 2), so that this is where to debug it.
    """

    overrides = _overrides(ctx)
    config_layers, problems = config.layers(overrides)
    error: ConfigError | None = None
    try:
        settings = config.get_settings(overrides)
    except ConfigError as exc:
        error, settings = exc, None
    if settings is not None:
        data = config.show(settings)
    else:
        try:
            data = mask(config.unvalidated(overrides))
        except ScelmoError:
            data = {}
    origin = config.origins(data, config_layers)
    unresolved: list[str] = []  # a role that cannot be built fails every run: an invalid configuration
    if settings is not None:
        resolved: dict[str, str] = {}
        for role, fn in (("describe", roles.description_writer), ("embed", roles.embedder)):
            try:
                comp = fn(settings)
                resolved[role] = f"{comp.kind} {comp.name!r} -> {comp.model_id}"
            except ScelmoError as exc:
                resolved[role] = f"unresolved: {mask(str(exc))}"
                unresolved.append(f"the {role!r} role cannot be set up: {mask(str(exc))}")
        data["resolved"] = resolved
        data["cache"]["resolved_path"] = str(settings.cache.resolved_path())
    messages = [mask(str(error))] if error is not None else []
    messages += unresolved
    messages += [mask(p) for p in problems if not messages or mask(p) not in messages[0]]
    if as_json:
        click.echo(json.dumps({**data, "origin": origin, **({"errors": messages} if messages else {})}, indent=2))
    else:
        import tomli_w

        try:
            click.echo(tomli_w.dumps(_drop_none(data)))
        except (TypeError, ValueError):  # an invalid value TOML cannot hold
            click.echo(json.dumps(data, indent=2))
        width = max((len(k) for k in origin), default=0)
        click.echo("# where each value came from (highest precedence first: --set, env, ./scelmo.toml or --config, "
                   "user config, profile, default):")
        for key, where in origin.items():
            click.echo(f"#   {key:<{width}}  {where}")
    if messages:
        for m in messages:
            click.secho(f"Error: {m}", fg="red", err=True)
        ctx.exit(error.exit_code if error is not None else 2)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_drop_none(v) for v in obj if v is not None]
    return obj


# --------------------------------------------------------------------------- cache
@cli.group("cache")
def cache_group() -> None:
    """Inspect or clear the description/vector cache."""


@cache_group.command("stats")
@click.pass_context
def cache_stats(ctx: click.Context) -> None:
    """Entries and sizes per role and model."""

    path = get_settings(_overrides(ctx)).cache.resolved_path()
    if not path.exists():
        click.echo(f"{path}: empty (no cache file yet)")
        return
    with Cache(path) as cache:
        rows = cache.stats()
    click.echo(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    if not rows:
        click.echo("  no entries")
    for r in rows:
        click.echo(f"  {r['role']:<9} {r['model']:<55} {r['entries']:>8} entries  {r['bytes'] / 1e6:8.2f} MB")


@cache_group.command("clear")
@click.option("--role", type=click.Choice(["describe", "embed"]))
@click.option("--model", help="Only this model id (see `scelmo cache stats`).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def cache_clear(ctx: click.Context, role: str | None, model: str | None, yes: bool) -> None:
    """Delete cache entries (all, or one role / model).

    A damaged cache file is deleted and replaced by an empty one when every entry is to
    be cleared (after confirmation, unless --yes).
    """

    path = get_settings(_overrides(ctx)).cache.resolved_path()
    if not path.exists():
        click.echo("Nothing to clear.")
        return
    if not yes and not click.confirm(f"Delete {'all' if not (role or model) else 'matching'} entries in {path}?"):
        raise click.Abort()
    try:
        with Cache(path) as cache:
            n = cache.clear(role=role, model=model)
    except CacheDamagedError:
        if role or model:
            raise CacheDamagedError(
                f"The scelmo cache at {path} is damaged, so its entries cannot be cleared by role or model. Run "
                "`scelmo cache clear --yes` without --role/--model to delete the file and start an empty one "
                "(or move the file away).", path) from None
        if not yes and not click.confirm(f"{path} is damaged and cannot be cleared entry by entry. Delete the file "
                                         "and start an empty cache?"):
            raise click.Abort() from None
        reset_cache_file(path)
        click.echo(f"The cache file {path} was damaged: deleted it and started an empty cache.")
        return
    click.echo(f"Deleted {n} entries.")


# --------------------------------------------------------------------------- demo
@cli.command("demo")
@click.option("-o", "--out-dir", default="scelmo_demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--resolution", default=1.0, show_default=True, help="Leiden resolution (both pipelines).")
@click.pass_context
def demo_cmd(ctx: click.Context, out_dir: str, resolution: float) -> None:
    """Zero-shot scelmo on scanpy's bundled pbmc68k_reduced vs. the standard PCA pipeline."""

    run_demo(Path(out_dir), resolution=resolution, config=_overrides(ctx))


#: Modules whose callbacks swallow an exception raised in them (numba's compiler runs Python
#: callbacks from LLVM through ctypes; weakref finalizers): a signal arriving there is
#: delivered again a moment later instead of being lost.
_SWALLOWING = ("numba", "llvmlite", "weakref", "_weakrefset", "ctypes")


def _terminated(signum: int, frame: Any) -> None:
    f = frame
    while f is not None:
        if str(f.f_globals.get("__name__", "")).startswith(_SWALLOWING):
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        f = f.f_back
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``scelmo`` console script."""

    warnings.showwarning = _echo_warning  # (loading plugins may warn, before `cli` itself runs)
    # SIGTERM (timeout, SLURM, docker stop) and Ctrl-C unwind the same way: temporary outputs are
    # removed and local dask workers shut down; the exit code is the shell's 128 + signal number
    # (click would turn Ctrl-C into "Aborted!" and exit 1). A SIGINT the shell set to be ignored
    # (a background job) stays ignored.
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _terminated)
    try:
        plugins.add_commands(cli)
    except ScelmoError as exc:  # plugins.strict and a broken plugin: one line, not a traceback
        click.secho(f"Error: {mask(str(exc))}", fg="red", err=True)
        sys.exit(exc.exit_code)
    cli.main(args=argv, prog_name="scelmo")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
