"""``scelmo train`` and ``scelmo predict``: the Model API on the command line."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import click

import scelmo
from scelmo import io, keys, tl
from scelmo import perturbation as P
from scelmo import plugin as plugins
from scelmo.cli import _parse_value
from scelmo.errors import InputError
from scelmo.model import MODEL_FILE, obs_column

from .device import resolve_device


def _ensure_gene_vectors(adata: Any, config: dict[str, Any]) -> None:
    if keys.GENE_EMBEDDING not in adata.varm:
        click.echo("No gene vectors in the input (varm['scelmo']): embedding its genes with the configured roles ...", err=True)
        tl.embed_genes(adata, config=config)


def _no_vector_error(unknown: list[str], known: list[str] | None = None) -> InputError:
    """The command line's error for perturbation components that have no vector (``known``: the
    trained model's components, at prediction)."""
    python = ("model.predict_perturbation(cells, NAME, perturbation_embeddings=...)" if known is not None else
              "scelmo.Model(..., perturbation_embeddings=...)")
    return InputError(
        f"No vector for perturbation component(s) {unknown[:10]}: "
        + (f"the model was not trained on them (it knows {', '.join(known[:8])}{', ...' if len(known) > 8 else ''}), "
           if known is not None else "")
        + "and they are not genes the configured knowledge knows (gene symbols, aliases or Ensembl IDs). Check the "
        "spelling and the control name (--option control=NAME at training). A perturbation that is not a gene (a drug, "
        f"a stimulus) needs a vector from its description, which the command line cannot make: use Python, {python} "
        "with vectors from scelmo.perturbation.text_perturbation_embeddings({name: description})."
    )


def _perturbed_gene_vectors(adata: Any, key: str, options: Any, config: dict[str, Any],
                            gene_embeddings: str | None) -> dict[str, Any] | None:
    """Vectors of the perturbed genes, as :class:`scelmo.Model` finds them (unmeasured ones embedded
    now), found here to give command-line advice for components that have none and to say which
    names were read as genes by another name. ``options``: the head's (control name, separator)."""
    if key not in adata.obs:
        return None  # setup_anndata reports the missing column
    comps = sorted({c for p in adata.obs[key].astype(str).unique()
                    for c in P.components(p, sep=options.separator, control=options.control)})
    if not comps:
        return None
    table = scelmo.Model._gene_table(adata, gene_embeddings, config)
    out, now = P.component_gene_vectors(comps, table, config=config, progress=None)
    if now:
        click.echo(f"Embedded {len(now)} perturbed gene(s) the data does not measure ({', '.join(now[:5])}"
                   f"{', ...' if len(now) > 5 else ''}).", err=True)
    unknown = [c for c in comps if c not in out]
    if unknown:
        raise _no_vector_error(unknown)
    note = P.another_name_note(list(out), table)
    if note:
        click.echo(note + ": use Python, scelmo.Model(..., perturbation_embeddings=scelmo.perturbation."
                   "text_perturbation_embeddings({name: description})).", err=True)
    return out


#: What ``train --latent-output`` and ``predict -o`` write, by extension (as ``embed-cells``).
_ANNDATA_OUTPUTS = {".h5ad": "AnnData HDF5", ".zarr": "AnnData zarr store"}


def _check_anndata_output(path: str, input: str, overwrite: bool, flag: str) -> None:
    """Refuse an output whose extension is not an AnnData format, or that exists (without
    ``--overwrite``), or that is INPUT, before anything is read."""
    suffix = Path(path).suffix.lower()
    if suffix not in _ANNDATA_OUTPUTS:
        allowed = ", ".join(f"{k} ({v})" for k, v in _ANNDATA_OUTPUTS.items())
        raise InputError(f"Cannot write {flag} {path}: the format follows the extension; use {allowed}.")
    if suffix == ".zarr":  # a zarr store is a directory
        io.check_output_dir(path, overwrite=overwrite, marker=io.ZARR_MARKERS)
    else:
        io.check_writable(path, overwrite=overwrite)
    if Path(path).resolve() == Path(input).resolve():
        raise InputError(f"{flag} must differ from INPUT (the input is never modified).")


def _write_anndata(adata: Any, path: str, overwrite: bool) -> None:
    """Write ``adata`` atomically in the format of ``path``'s extension (checked before)."""
    if Path(path).suffix.lower() == ".zarr":
        io.write_zarr(adata, path, overwrite=overwrite)
    else:
        io.write_h5ad(adata, path)


def _matrix_choice(adata: Any, layer: str | None) -> dict[str, Any]:
    """``setup_anndata``'s ``layer=``/``use_raw=`` for ``--layer``: ``X`` (unless INPUT has a
    layer of that name) is ``adata.X`` itself, not raw."""
    if layer == "X" and "X" not in adata.layers:
        return {"layer": None, "use_raw": False}
    return {"layer": layer}


def _how_trained(epochs: Any, device: Any, seconds: float) -> str:
    """``"1 epoch on cpu in 0.9 s"``, ``"12 epochs in 3.0 s"``: no empty device, singular for one epoch."""
    parts = [] if epochs is None else [f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    if device:
        parts.append(f"on {device}")
    return " ".join([*parts, f"in {seconds:.1f} s"])


def add_commands(cli: Any) -> None:
    """Add ``train`` and ``predict`` to the root ``scelmo`` group."""

    @cli.command("train")
    @click.argument("input", type=click.Path())
    @click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Directory for the trained model.")
    @click.option("--head", default="annotation", show_default=True, help="Task head: annotation, integration, or a plugin's.")
    @click.option("--labels-key", help="obs column of cell types.")
    @click.option("--unlabeled-category", help="A --labels-key value meaning 'no label' (e.g. Unknown): those "
                  "cells count as unlabelled, like missing values.")
    @click.option("--batch-key", help="obs column of batches.")
    @click.option("--perturbation-key", help="obs column of perturbations (perturbation head; add --option control=NAME).")
    @click.option("--layer", help="Layer with (log-normalised) expression, or X for adata.X (default: raw if "
                  "present, else X).")
    @click.option("--gene-embeddings", type=click.Path(file_okay=False, exists=True), help="Saved GeneEmbeddings directory.")
    @click.option("--max-epochs", type=click.IntRange(min=1), help="Upper bound on epochs (default: the head's own; annotation and "
                  "integration 30, perturbation 60).")
    @click.option("--batch-size", type=click.IntRange(min=2), help="Cells per mini-batch (at least 2).")
    @click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
    @click.option("--no-early-stopping", is_flag=True, help="Train all epochs.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default 1 on CPU).")
    @click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Head option, e.g. --option knn_k=15.")
    @click.option("--latent-output", type=click.Path(), help="Also write INPUT with the learned embedding in obsm (.h5ad or .zarr).")
    @click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
    @click.pass_context
    def train_cmd(ctx, input, output, head, labels_key, unlabeled_category, batch_key, perturbation_key, layer, gene_embeddings, max_epochs,
                  batch_size, lr, no_early_stopping, device, seed, threads, options, latent_output, overwrite):
        """Train a fine-tuning head on INPUT (.h5ad) and save the model to OUTPUT."""

        # every option is checked before the input is read or any gene is embedded (which may cost money)
        io.check_output_dir(output, overwrite=overwrite, marker=MODEL_FILE)
        if latent_output:
            _check_anndata_output(latent_output, input, overwrite, "--latent-output")
        head_options = {}
        for item in options:
            k, sep, v = item.partition("=")
            if not sep:
                raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
            head_options[k.strip()] = _parse_value(v.strip())
        probe = plugins.heads.create(head, **head_options)  # an unknown head or option fails here
        for needed, given, flag, what in (
                ("requires_labels", labels_key, "--labels-key", "labels (an obs column of cell types)"),
                ("requires_batch", batch_key, "--batch-key", "batches (an obs column of each cell's batch)"),
                ("requires_perturbations", perturbation_key or batch_key, "--perturbation-key",
                 "each cell's perturbation (an obs column, e.g. condition; add --option control=NAME)")):
            if getattr(probe, needed, False) and given is None:
                raise click.UsageError(f"The {head!r} head needs {what}: pass {flag} COLUMN.")
        resolve_device(device)  # a device that is not here fails here
        config = dict(ctx.obj or {})
        adata = io.read_input(input)
        scelmo.Model.setup_anndata(adata, labels_key=labels_key, batch_key=batch_key, perturbation_key=perturbation_key,
                                   unlabeled_category=unlabeled_category, **_matrix_choice(adata, layer))
        # the head's own checks of the columns (the control name, two batches ...), before any gene is embedded
        probe.check_inputs(labels=obs_column(adata, labels_key, unlabeled=unlabeled_category),
                           batch=obs_column(adata, batch_key),
                           perturbations=obs_column(adata, perturbation_key))
        if gene_embeddings is None:
            _ensure_gene_vectors(adata, config)
        if head == "perturbation" and perturbation_key and "perturbation_embeddings" not in head_options:
            head_options["perturbation_embeddings"] = _perturbed_gene_vectors(
                adata, perturbation_key, probe.options, config, gene_embeddings)
        model = scelmo.Model(adata, head=head, gene_embeddings=gene_embeddings, config=config, **head_options)
        t0 = time.perf_counter()
        model.train(max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                    early_stopping=False if no_early_stopping else None, device=device, seed=seed, num_threads=threads)
        model.save(output, overwrite=overwrite)
        info = model.train_info
        score = info.get("best_validation_score")
        click.echo(
            f"Trained {head!r} on {info['n_cells']} cells ({info['n_genes_with_vector']}/{info['n_genes']} genes with vectors), "
            f"{_how_trained(info.get('epochs'), info.get('device'), time.perf_counter() - t0)}"
            + (f", best validation score {score:.3f}" if score is not None else "") + f" -> {output}"
        )
        if latent_output:
            key = keys.X_SCELMO_INTEGRATED if head == "integration" else keys.X_SCELMO_FINETUNED
            model.get_latent_representation(key_added=key)
            _write_anndata(adata, latent_output, overwrite)
            click.echo(f"Wrote obsm[{key!r}] -> {latent_output}")

    @cli.command("predict")
    @click.argument("input", type=click.Path())
    @click.option("-m", "--model", "model_dir", required=True, type=click.Path(file_okay=False, exists=True), help="Saved model directory.")
    @click.option("-o", "--output", required=True, type=click.Path(), help="Output .h5ad or .zarr.")
    @click.option("--method", type=click.Choice(["knn", "classifier"]), default=None,
                  help="Label prediction: the head's kNN vote or its classifier (default: kNN when the head has one).")
    @click.option("--key-added", default="scelmo_label", show_default=True, help="obs column for labels (annotation head).")
    @click.option("--latent-key", help="obsm key for the learned embedding (default X_scelmo_finetuned / X_scelmo_integrated).")
    @click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps.")
    @click.option("--perturbation", help="Perturbation head: predict INPUT's (control) cells under this perturbation "
                  "(e.g. KLF1 or KLF1+CEBPA); OUTPUT then holds the predicted expression.")
    @click.option("--layer", help="INPUT's layer to read, or X for adata.X (default: the layer, raw or X the model "
                  "was trained on; INPUT must have it). Counts are log-normalised.")
    @click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
    @click.pass_context
    def predict_cmd(ctx, input, model_dir, output, method, key_added, latent_key, device, perturbation, layer, overwrite):
        """Apply a saved model to INPUT (.h5ad; genes may differ from training) and write OUTPUT."""

        _check_anndata_output(output, input, overwrite, "OUTPUT")
        explicit = {p for p in ("method", "key_added")
                    if ctx.get_parameter_source(p) is not click.core.ParameterSource.DEFAULT}
        adata = io.read_input(input)
        if layer is not None:
            scelmo.Model.setup_anndata(adata, **_matrix_choice(adata, layer))
        model = scelmo.Model.load(model_dir, adata=adata)
        if explicit and not model.head.supports("labels"):
            flags = " and ".join(f"--{p.replace('_', '-')}" for p in sorted(explicit))
            raise click.UsageError(f"The {model.head_name!r} model predicts no labels, so {flags} "
                                   "does not apply; leave it out (the learned embedding goes to --latent-key).")
        if perturbation is not None and not model.head.supports("perturbation"):
            raise click.UsageError(f"--perturbation applies to a perturbation model; {model_dir} holds a "
                                   f"{model.head_name!r} model. Leave it out, or train one with --head perturbation.")
        if perturbation is not None or model.head.supports("perturbation"):
            if perturbation is None:
                raise click.UsageError("This is a perturbation model: say which perturbation with --perturbation NAME.")
            import anndata as ad

            with warnings.catch_warnings():  # (predict_perturbation says them)
                warnings.simplefilter("ignore")
                _, _, unknown = model._perturbation_inputs(perturbation)
            vectors = None
            if unknown:  # a held-out target the data does not measure: embedded as `scelmo train` does
                vectors = P.component_gene_vectors(unknown, model.gene_table, config=dict(ctx.obj or {}), progress=None)[0]
                if any(c not in vectors for c in unknown):
                    raise _no_vector_error([c for c in unknown if c not in vectors], model.head.components)
            pred = model.predict_perturbation(adata, perturbation, device=device, perturbation_embeddings=vectors)
            # the genes under INPUT's own names, with its var columns (predict_perturbation labels
            # them as the data does; the matrix read may be raw.X, whose var is raw.var)
            var = adata.var
            if adata.raw is not None and not pred.columns.isin(adata.var_names).all():
                var = adata.raw.var
            var = var[~var.index.duplicated(keep="first")].reindex(pred.columns)
            out = ad.AnnData(pred.to_numpy(), obs=adata.obs.copy(), var=var)
            out.obs["scelmo_perturbation"] = perturbation
            out.uns["scelmo"] = dict(adata.uns.get("scelmo", {}))
            _write_anndata(out, output, overwrite)
            click.echo(f"Wrote the predicted expression of {out.n_obs} cells under {perturbation!r} "
                       f"({out.n_vars} genes) -> {output}")
            return
        _, names, E = model.get_expression(adata)
        covered = int((abs(E).sum(1) > 0).sum())
        if covered < 0.5 * len(names) and keys.GENE_EMBEDDING not in adata.varm:
            _ensure_gene_vectors(adata, dict(ctx.obj or {}))
        key = latent_key or (keys.X_SCELMO_INTEGRATED if model.head_name == "integration" else keys.X_SCELMO_FINETUNED)
        model.get_latent_representation(adata, key_added=key, device=device)
        msg = f"obsm[{key!r}]"
        if model.head.supports("labels"):
            model.predict(adata, method=method, key_added=key_added, device=device)
            msg += f", obs[{key_added!r}] ({method or ('knn' if model.head.supports('knn') else 'classifier')})"
        _write_anndata(adata, output, overwrite)
        click.echo(f"Wrote {msg} for {adata.n_obs} cells -> {output}")
