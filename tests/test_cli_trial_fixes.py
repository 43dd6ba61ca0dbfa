"""Findings of a new user's command-line trial: a locked or damaged cache, a damaged saved
model, `describe genes` with aliases, header-less name lists and Python words in CLI messages."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import scelmo
from scelmo import keys, testing
from scelmo import plugin as plugins
from scelmo.cli import _echo_warning, cli, cli_message
from scelmo.errors import IntegrityError, ScelmoWarning
from scelmo.llm import cache as cache_mod
from scelmo.llm.cache import Cache, CacheDamagedError, CacheLockedError, text_hash
from scelmo.testing.server import FakeLLMServer


def _run(args, **kw):
    return CliRunner().invoke(cli, args, **kw)


# --------------------------------------------------------------------------- a locked cache
@pytest.fixture
def locked_cache(tmp_path, monkeypatch):
    """A cache file whose write lock another connection holds (as a stuck process would)."""
    monkeypatch.setattr(cache_mod, "LOCK_TIMEOUT", 1.0)
    monkeypatch.setattr(cache_mod, "LOCK_NOTICE", 0.2)
    path = tmp_path / "c.sqlite"
    with Cache(path) as c:
        c.put_vectors("m", {"old": np.ones(4, np.float32)})
    holder = sqlite3.connect(str(path), isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def test_a_locked_cache_warns_waits_a_bounded_time_and_says_what_was_not_stored(locked_cache):
    c = Cache(locked_cache)
    assert c.get_vectors("m", ["old"])["old"][0] == 1  # reading is not blocked (WAL)
    t0 = time.monotonic()
    with pytest.warns(ScelmoWarning, match="another process holds its lock"), \
            pytest.raises(CacheLockedError) as err:
        c.put_vectors("m", {"a": np.ones(4), "b": np.ones(4)})
    assert time.monotonic() - t0 < 5  # not 5 x 60 s
    msg = str(err.value)
    assert str(locked_cache) in msg and "Another process holds the lock" in msg
    assert "The 2 vectors made just now could not be stored" in msg and "--set cache.path=" in msg
    t0 = time.monotonic()
    with pytest.raises(CacheLockedError):  # once given up, later writes of this run do not wait again
        c.put_texts("m", "p", {"h": "a description"})
    assert time.monotonic() - t0 < 0.9
    c.close()


def test_cli_on_a_locked_cache_is_one_line_not_a_traceback(locked_cache):
    res = _run(["--set", f"cache.path=\"{locked_cache}\"", "cache", "clear", "--yes"])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.exception is not None and isinstance(res.exception, SystemExit)
    assert "Warning: Waiting to write to the scelmo cache" in res.output
    assert f"Error: Another process holds the lock on the scelmo cache at {locked_cache}" in res.output


def test_describe_with_a_locked_cache_says_the_answer_was_not_stored(locked_cache, tmp_path):
    with FakeLLMServer() as srv:
        res = _run(["--no-progress", "--set", f"describe.api_base=\"{srv.openai_base}\"",
                    "--set", f"cache.path=\"{locked_cache}\"", "--set", "describe.options.retries=0",
                    "describe", "genes", "CD3E", "--model", "openai/gpt-4o-mini", "-o", str(tmp_path / "d.tsv")])
    assert res.exit_code == 1, res.output
    assert "The 1 description made just now could not be stored there and is lost" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- a damaged cache
def _damaged_cache(path):
    with Cache(path) as c:  # a few hundred entries, as a long run leaves
        c.put_vectors("model", {text_hash(f"t{i}"): np.ones(384, np.float32) for i in range(300)})
        c._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = os.path.getsize(path)
    rng = np.random.default_rng(0)
    with open(path, "r+b") as fh:
        for off in range(8192, size, 4096):
            fh.seek(off + 100)
            fh.write(rng.bytes(500))
    return path


def test_a_damaged_cache_is_one_line_that_says_to_delete_it_and_clear_resets_it(tmp_path):
    path = _damaged_cache(tmp_path / "c.sqlite")
    with pytest.raises(CacheDamagedError, match="is damaged") as err, Cache(path) as c:
        c.get_vectors("model", [text_hash(f"t{i}") for i in range(300)])
    assert isinstance(err.value, IntegrityError) and str(path) in str(err.value)
    base = ["--set", f"cache.path=\"{path}\""]
    res = _run([*base, "cache", "stats"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"The scelmo cache at {path} is damaged" in res.output and "`scelmo cache clear --yes` deletes it" in res.output
    res = _run([*base, "cache", "clear", "--role", "embed", "--yes"])  # a part of a damaged file: refused
    assert res.exit_code == 1 and "without --role/--model" in res.output and path.exists()
    res = _run([*base, "cache", "clear"], input="y\nn\n")  # asked again before the file is deleted
    assert res.exit_code == 1 and "is damaged and cannot be cleared entry by entry" in res.output
    assert path.stat().st_size > 100_000
    res = _run([*base, "cache", "clear", "--yes"])
    assert res.exit_code == 0 and "deleted it and started an empty cache" in res.output, res.output
    res = _run([*base, "cache", "stats"])
    assert res.exit_code == 0 and "no entries" in res.output


def test_a_cache_with_a_damaged_header_is_reset_but_another_file_is_never_deleted(tmp_path):
    bad = tmp_path / "c.sqlite"
    bad.write_bytes(b"not an sqlite file at all " * 40)
    res = _run(["--set", f"cache.path=\"{bad}\"", "cache", "stats"])
    assert res.exit_code == 1 and "is damaged or is not a scelmo cache" in res.output and "Delete or move" in res.output
    res = _run(["--set", f"cache.path=\"{bad}\"", "cache", "clear", "--yes"])
    assert res.exit_code == 0 and bad.read_bytes()[:16] == b"SQLite format 3\x00"
    other = tmp_path / "data.h5ad"  # cache.path pointing at a user's file by mistake
    other.write_bytes(b"precious " * 40)
    res = _run(["--set", f"cache.path=\"{other}\"", "cache", "clear", "--yes"])
    assert res.exit_code == 1 and "not an SQLite file, so it was not deleted" in res.output
    assert other.read_bytes() == b"precious " * 40


# --------------------------------------------------------------------------- a damaged model
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    pytest.importorskip("torch")
    a = scelmo.datasets.pbmc68k_reduced()[:200].copy()
    ge = testing.random_gene_embeddings(list(a.var_names), dim=16, seed=0)
    a.varm[keys.GENE_EMBEDDING], _ = ge.aligned(list(a.var_names))
    scelmo.Model.setup_anndata(a, labels_key="bulk_labels")
    with pytest.warns(ScelmoWarning):
        model = scelmo.Model(a, head="annotation").train(max_epochs=1, seed=0, early_stopping=False)
    query = tmp_path_factory.mktemp("q") / "query.h5ad"
    a.write_h5ad(query)
    return model.save(tmp_path_factory.mktemp("m") / "model"), query


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_saved_model_records_head_checksums_and_loads(saved_model, tmp_path):
    path, _ = saved_model
    info = json.loads((path / "model.json").read_text())
    assert set(info["head_sha256"]) >= {"weights.pt", "head.json"}
    scelmo.Model.load(path)
    old = _copy(path, tmp_path / "old")  # a model saved before the checksums: still loads
    del info["head_sha256"]
    (old / "model.json").write_text(json.dumps(info))
    scelmo.Model.load(old)


@pytest.mark.parametrize("damage, checksums, match", [
    ("weights", True, r"weights.pt does not match its checksum"),
    ("weights", False, r"weights.pt cannot be read"),
    ("arrays", False, r"arrays.npz cannot be read"),
    ("model_json", True, r"model.json is not valid JSON"),
    ("head_json", False, r"head cannot be read \(JSONDecodeError"),  # (read by the head subclass first)
])
def test_a_damaged_model_is_a_clean_error_naming_the_file(saved_model, tmp_path, damage, checksums, match):
    path = _copy(saved_model[0], tmp_path / "m")
    if not checksums:
        info = json.loads((path / "model.json").read_text())
        del info["head_sha256"]
        (path / "model.json").write_text(json.dumps(info))
    if damage == "weights":
        os.truncate(path / "head" / "weights.pt", 1000)
    elif damage == "arrays":
        if not (path / "head" / "arrays.npz").exists():
            pytest.skip("this head saves no arrays")
        os.truncate(path / "head" / "arrays.npz", 50)
    elif damage == "model_json":
        (path / "model.json").write_text("{\n")
    else:
        (path / "head" / "head.json").write_text("{")
    with pytest.raises(IntegrityError, match=match) as err:
        scelmo.Model.load(path)
    assert "damaged" in str(err.value) and "train it again" in str(err.value)


def test_cli_predict_with_a_damaged_model_is_one_line(saved_model, tmp_path):
    plugins.add_commands(cli)  # `predict` comes from scelmo_torch, as in the console script
    path = _copy(saved_model[0], tmp_path / "m")
    os.truncate(path / "head" / "weights.pt", 1000)
    res = _run(["--no-progress", "predict", str(saved_model[1]), "-m", str(path), "-o", str(tmp_path / "p.h5ad")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "weights.pt does not match its checksum" in res.output
    assert "`scelmo train" in res.output


# --------------------------------------------------------------------------- describe genes
def test_describe_genes_resolves_aliases_as_embed_genes_does(tmp_path):
    out = tmp_path / "d.tsv"
    res = _run(["describe", "genes", "IGJ", "H2AFY", "FYB", "ENSG00000132465", "NOTAGENE1", "-o", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out, sep="\t")
    assert table["item"].tolist() == ["IGJ", "H2AFY", "FYB", "ENSG00000132465"]  # the names given
    assert table["symbol"].tolist() == ["JCHAIN", "MACROH2A1", "FYB1", "JCHAIN"]
    assert "1 failed: unknown to the knowledge table" in res.output and "NOTAGENE1:" in res.output
    assert "run again to retry" not in res.output


def test_describe_of_only_unknown_names_is_an_input_error(tmp_path):
    res = _run(["describe", "genes", "NOTAGENE1", "NOTAGENE2", "-o", str(tmp_path / "d.tsv")])
    assert res.exit_code == 3, res.output  # the names, not a provider (5)
    assert "knows none of the names" in res.output and "run again to retry" not in res.output


def test_describe_concurrency_does_not_apply_to_the_offline_table(tmp_path):
    res = _run(["describe", "genes", "CD3E", "-o", str(tmp_path / "d.tsv"), "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    assert "--concurrency does not apply to the offline knowledge table" in res.output


# --------------------------------------------------------------------------- name lists
@pytest.mark.parametrize("name, text, expected", [
    ("list.csv", "CD3E\nMS4A1\nGZMB\n", ["CD3E", "MS4A1", "GZMB"]),
    ("list.tsv", "CD3E\nMS4A1\nGZMB\n", ["CD3E", "MS4A1", "GZMB"]),
    ("list.csv", "gene\nCD3E\nMS4A1\n", ["CD3E", "MS4A1"]),
    ("list.txt", "Gene Symbol\nCD3E\nMS4A1\n", ["CD3E", "MS4A1"]),
    ("list.csv", "hgnc_symbol,logFC\nCD3E,1.5\nMS4A1,-2\n", ["CD3E", "MS4A1"]),
    ("list.csv", "CD3E,1.5\nMS4A1,-2\n", ["CD3E", "MS4A1"]),
])
def test_a_list_is_read_alike_by_describe_and_embed_genes(tmp_path, name, text, expected):
    f = tmp_path / name
    f.write_text(text)
    res = _run(["describe", "genes", "--from", str(f), "-o", str(tmp_path / "d.tsv")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "d.tsv", sep="\t")["item"].tolist() == expected
    res = _run(["embed-genes", "--genes-file", str(f), "-o", str(tmp_path / "ge")])
    assert res.exit_code == 0, res.output
    assert "not known genes" not in res.output
    assert len(scelmo.GeneEmbeddings.load(tmp_path / "ge")) == len(expected)


def test_a_named_column_that_is_missing_is_an_input_error(tmp_path):
    (tmp_path / "t.csv").write_text("gene,score\nCD3E,1\n")
    res = _run(["describe", "genes", "--from", str(tmp_path / "t.csv"), "--column", "symbol", "--dry-run"])
    assert res.exit_code == 3 and "has no column 'symbol'" in res.output


# --------------------------------------------------------------------------- CLI words
def test_python_keywords_in_messages_become_flags():
    plugins.add_commands(cli)
    predict, train = cli.commands["predict"], cli.commands["train"]
    assert cli_message("The 'annotation' head does not predict perturbations; use head='perturbation'.",
                       [predict, cli]).endswith("use `scelmo train --head perturbation`.")
    assert cli_message("device='cuda' was asked for but CUDA is not available; use device='auto' or 'cpu'.",
                       [train, cli]) == ("`--device cuda` was asked for but CUDA is not available; use "
                                         "`--device auto` or 'cpu'.")
    assert cli_message("labels_key='x' is not a column of adata.obs.", [train, cli]).startswith("`--labels-key x`")
    assert cli_message("predict with `method=\"classifier\"`, lower `knn_k`, or add cells.", [train, cli]) == \
        "predict with `scelmo predict --method classifier`, lower `--option knn_k=...`, or add cells."
    assert cli_message("o exists; pass --overwrite (overwrite=True) to replace it.",
                       [cli.commands["embed-genes"], cli]) == "o exists; pass --overwrite to replace it."
    call = "see Model(adata, head='perturbation', control='ctrl')."  # Python written out stays Python
    assert cli_message(call, [train, cli]) == call


def test_warnings_name_the_running_commands_flags(capsys):
    plugins.add_commands(cli)
    with click.Context(cli) as root, click.Context(cli.commands["train"], parent=root):
        _echo_warning(ScelmoWarning("predict with `method=\"classifier\"`, lower `knn_k`."), ScelmoWarning,
                      scelmo.__file__, 1)
    err = capsys.readouterr().err
    assert "`scelmo predict --method classifier`" in err and "`--option knn_k=...`" in err


def test_a_zarr_output_in_a_missing_folder_names_the_output(tmp_path):
    out = tmp_path / "missing" / "x.zarr"
    res = _run(["embed-cells", str(tmp_path / "in.h5ad"), "-o", str(out)])
    assert res.exit_code == 3, res.output
    assert f"Cannot write {out}" in res.output and ".probe" not in res.output


def test_a_signal_inside_a_callback_that_swallows_exceptions_is_delivered_again():
    """Trial finding: Ctrl-C during numba's compile (Python callbacks run from LLVM through
    ctypes, which print and drop an exception) was lost or ended in a RuntimeError; the
    handler now sends the signal again a moment later, outside such a callback."""
    import signal
    import sys
    import time

    from scelmo.cli import _terminated

    got = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        callback_globals = {"__name__": "numba.core.fake_callback", "sys": sys}
        exec("def callback():\n    return sys._getframe()\n", callback_globals)
        frame = callback_globals["callback"]()
        _terminated(signal.SIGUSR1, frame)  # no SystemExit there: it would be swallowed
        deadline = time.time() + 5
        while not got and time.time() < deadline:
            time.sleep(0.02)
        assert got == [signal.SIGUSR1]
        with pytest.raises(SystemExit) as stop:  # anywhere else: unwind at once
            _terminated(signal.SIGUSR1, sys._getframe())
        assert stop.value.code == 128 + signal.SIGUSR1
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_an_interrupted_cache_write_leaves_no_open_transaction_and_no_false_damage(tmp_path):
    """Review finding: a write interrupted between BEGIN and COMMIT (Ctrl-C in a notebook) left the
    transaction open, and the next write said the cache was damaged and should be deleted."""
    from scelmo.llm.cache import Cache

    c = Cache(tmp_path / "c.sqlite")
    try:
        c._conn.execute("BEGIN IMMEDIATE")  # what an interrupted write leaves behind
        c.put_texts("m", "p", {"h1": "text one"})
        assert c.get_texts("m", "p", ["h1"]) == {"h1": "text one"}
    finally:
        c.close()


def test_cache_clear_never_deletes_another_programs_database(tmp_path):
    """Review finding: reset_cache_file deleted any SQLite file (cache.path pointed elsewhere by mistake)."""
    import sqlite3

    from scelmo.llm.cache import CacheError, reset_cache_file

    other = tmp_path / "notes.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (t TEXT)")
    with pytest.raises(CacheError, match="without scelmo's `entries` table"):
        reset_cache_file(other)
    assert other.is_file()


def test_a_table_header_scelmo_does_not_know_is_read_as_a_name_with_a_note(tmp_path):
    """Review finding: a one-column .csv whose header is not a known word ('marker') became an
    item silently (and would be sent to an LLM); a non-UTF-8 list was a traceback."""
    (tmp_path / "list.csv").write_text("marker\nCD3E\nMS4A1\n")
    res = CliRunner().invoke(cli, ["describe", "genes", "--from", str(tmp_path / "list.csv"), "--dry-run"])
    assert "first line ('marker') is read as a name" in res.output and "--column marker" in res.output
    (tmp_path / "latin1.txt").write_bytes("CD3E\nGEN\xe9\n".encode("latin-1"))
    res = CliRunner().invoke(cli, ["describe", "genes", "--from", str(tmp_path / "latin1.txt"), "--dry-run"])
    assert res.exit_code == 3 and "Cannot read" in res.output and "UTF-8" in res.output


def test_describe_takes_species_as_embed_genes_does(tmp_path):
    """Mouse trial: `describe genes Cxcl1 Cd3e` had no --species (genes.species only)."""
    import pandas as pd

    symbol = {}
    for species in ("human", "mouse"):  # Ang4: a human alias of ANGPT4, the mouse paralog of human ANG
        res = CliRunner().invoke(cli, ["describe", "genes", "ANG4", "--species", species, "-o",
                                       str(tmp_path / f"{species}.tsv")])
        assert res.exit_code == 0, res.output
        symbol[species] = pd.read_csv(tmp_path / f"{species}.tsv", sep="\t")["symbol"].tolist()
    assert symbol == {"human": ["ANGPT4"], "mouse": ["ANG"]}
