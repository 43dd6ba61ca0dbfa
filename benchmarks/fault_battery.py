"""Fault battery: provider faults, cache identity, secrets, disk faults and CLI behaviour.

Each case drives scelmo as a user would (Python API or the ``scelmo`` CLI in a
subprocess) against :class:`FakeLLMServer` on 127.0.0.1 (never a remote host) or a
real tiny tmpfs, and records what happened. Run it on two versions of the package
to get a before/after table::

    git worktree add ../scelmo-before a0df378      # the commit before the trust fixes
    PYTHONPATH=../scelmo-before:../scelmo-before/plugins .venv/bin/python benchmarks/fault_battery.py --label before
    .venv/bin/python benchmarks/fault_battery.py --label after
    .venv/bin/python benchmarks/fault_battery.py --table      # merge into results.md

The loopback server is loaded from this checkout's ``scelmo/testing/server.py`` by
file path, so both versions face the same server. Writes
``benchmarks/results/fault_battery/{<label>.json,results.md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "fault_battery"
PASSWORD = "Pa55-url-SECRET-9876"
KEY = "sk-local-gateway-4242"


def _server_module() -> Any:
    path = ROOT / "scelmo" / "testing" / "server.py"
    spec = importlib.util.spec_from_file_location("_battery_server", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


SRV = _server_module()


def _cfg(tmp: Path, base: str | None, *, dmodel: str = "openai/gpt-4o-mini",
         emodel: str = "openai/text-embedding-3-small", dopts: dict | None = None,
         eopts: dict | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "describe.model": dmodel, "describe.options": {"retries": 0, "backoff": 0.0, **(dopts or {})},
        "embed.model": emodel, "embed.options": {"retries": 0, "backoff": 0.0, **(eopts or {})},
        "cache.path": str(tmp / "cache.sqlite"),
    }
    if base is not None:
        cfg["describe.api_base"] = base
        cfg["embed.api_base"] = base
    return cfg


def _settings(cfg: dict[str, Any]) -> Any:
    from scelmo import get_settings

    return get_settings(cfg)


def _rows(tmp: Path) -> int:
    with sqlite3.connect(tmp / "cache.sqlite") as db:
        return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def _cli(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 300) -> tuple[int, str]:
    full_env = {**os.environ, "SCELMO_NO_PROGRESS": "1", **(env or {})}
    # never the checkout as working directory: `python -m` puts it first on sys.path, which
    # would run this checkout's scelmo instead of the one on PYTHONPATH (the `before` run)
    r = subprocess.run([sys.executable, "-m", "scelmo", "--no-progress", *args], capture_output=True,
                       text=True, env=full_env, cwd=cwd or tempfile.gettempdir(), timeout=timeout)
    return r.returncode, r.stdout + r.stderr


_TMP_PATH = re.compile(re.escape(tempfile.gettempdir()) + r"/scelmo-battery-[^/'\"\s]+")


def _scrub(text: str) -> str:
    """Results without machine-specific paths: a case's temporary directory becomes <tmp>."""
    return _TMP_PATH.sub("<tmp>", text)


def _traceback_in(text: str) -> bool:
    return "Traceback (most recent call last)" in text


# ----------------------------------------------------------------------------- cases
def case_cache_endpoint(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge.descriptions import describe

    with SRV.FakeLLMServer() as a, SRV.FakeLLMServer() as b:
        describe(["CD3E", "LYZ"], config=_settings(_cfg(tmp, a.openai_base)))
        describe(["CD3E", "LYZ"], config=_settings(_cfg(tmp, b.openai_base)))
        asked = b.requests["/v1/chat/completions"]
    return {"measure": f"endpoint B asked {asked} of 2 genes already answered by A", "ok": asked == 2}


def case_cache_embed_endpoint(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge import roles

    with SRV.FakeLLMServer() as a, SRV.FakeLLMServer() as b:
        roles.embed_texts(_settings(_cfg(tmp, a.openai_base)), ["x", "y"])
        roles.embed_texts(_settings(_cfg(tmp, b.openai_base)), ["x", "y"])
        asked = b.requests["/v1/embeddings"]
    return {"measure": f"endpoint B sent {asked} embedding requests for texts cached from A", "ok": asked >= 1}


def case_cache_options(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge import roles

    with SRV.FakeLLMServer() as a:
        roles.embed_texts(_settings(_cfg(tmp, a.openai_base, eopts={"dimensions": 8})), ["x"])
        n = a.requests["/v1/embeddings"]
        out = roles.embed_texts(_settings(_cfg(tmp, a.openai_base, eopts={"dimensions": 12})), ["x"])
        asked = a.requests["/v1/embeddings"] - n
        dim = len(out[0]) if len(out) else 0
    return {"measure": f"dimensions 8 then 12: {asked} new request(s), vector length {dim}",
            "ok": asked == 1 and dim == 12}


def case_missing_key(tmp: Path) -> dict[str, Any]:
    """A remote model and no OPENAI_API_KEY (the host is not reachable from here either)."""
    code = (
        "import time, scelmo\n"
        "from scelmo.knowledge.descriptions import describe\n"
        f"cfg = scelmo.get_settings({{'describe.model': 'openai/gpt-4o-mini', 'cache.path': r'{tmp / 'c.sqlite'}'}})\n"
        "for attempt in range(2):  # the second call is timed: litellm's import is not part of it\n"
        "    t = time.perf_counter()\n"
        "    try:\n"
        "        describe(['CD3E'], config=cfg)\n"
        "        msg = 'NO ERROR'\n"
        "    except Exception as e:\n"
        "        msg = type(e).__name__ + ' | ' + str(e).splitlines()[0][:200]\n"
        "print(msg)\n"
        "print('SECONDS', round(time.perf_counter() - t, 2))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_BASE_URL")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tmp)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    secs = float(lines[-1].split()[-1]) if lines and lines[-1].startswith("SECONDS") else float("nan")
    what = lines[-2] if len(lines) >= 2 else (r.stderr.strip().splitlines() or ["?"])[-1]
    ok = "OPENAI_API_KEY" in what and secs < 5
    return {"measure": f"{what} after {secs} s (second call, litellm already imported)", "ok": ok, "seconds": secs}


def case_loopback_key(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge.descriptions import describe

    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        with SRV.FakeLLMServer(api_key=KEY) as s:
            try:
                res = describe(["CD3E"], config=_settings(_cfg(tmp, s.openai_base)))
                got = f"{len(res.texts) if hasattr(res, 'texts') else '?'} answered"
                ok = True
            except Exception as exc:  # noqa: BLE001 - recorded
                got, ok = _err(exc), False
            n401 = s.requests.get("401", 0) if hasattr(s.requests, "get") else 0
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old
    return {"measure": f"gateway needing a key, OPENAI_API_KEY set: {got}" + (f" ({n401} x 401)" if n401 else ""),
            "ok": ok}


def case_drip(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge.descriptions import describe

    with SRV.FakeLLMServer(drip_interval=0.1) as s:
        t = time.perf_counter()
        try:
            describe(["CD3E"], config=_settings(_cfg(tmp, s.openai_base, dmodel="openai/drip",
                                                     dopts={"timeout": 2})))
            got = "answered"
        except Exception as exc:  # noqa: BLE001
            got = _err(exc)
        secs = time.perf_counter() - t
    return {"measure": f"timeout=2, one byte per 0.1 s: gave up after {secs:.1f} s ({got})", "ok": secs < 5,
            "seconds": secs}


def case_apology(tmp: Path) -> dict[str, Any]:
    from scelmo.knowledge.descriptions import describe

    with SRV.FakeLLMServer() as s:
        try:
            describe(["CD3E"], config=_settings(_cfg(tmp, s.openai_base, dmodel="openai/apologize")))
            got = "no error"
        except Exception as exc:  # noqa: BLE001
            got = _err(exc)
    cached = _rows(tmp) if (tmp / "cache.sqlite").exists() else 0
    return {"measure": f"'I apologize, but I cannot ...': {cached} answer(s) cached ({got})", "ok": cached == 0}


def _embed_case(tmp: Path, model: str, what: str, *, server: dict[str, Any] | None = None,
                eopts: dict | None = None) -> dict[str, Any]:
    from scelmo.knowledge import roles

    with SRV.FakeLLMServer(**(server or {})) as s:
        try:
            roles.embed_texts(_settings(_cfg(tmp, s.openai_base, emodel=model, eopts=eopts)), ["x", "y"])
            got = "accepted"
        except Exception as exc:  # noqa: BLE001
            got = "rejected: " + _err(exc)
    cached = _rows(tmp) if (tmp / "cache.sqlite").exists() else 0
    return {"measure": f"{what}: {got[:150]}; {cached} cached", "ok": got.startswith("rejected") and cached == 0}


def case_wrong_dimensions(tmp: Path) -> dict[str, Any]:
    return _embed_case(tmp, "openai/text-embedding-3-small", "dimensions=8 asked, 16 returned",
                       server={"honour_dimensions": False}, eopts={"dimensions": 8})


def case_zero_vectors(tmp: Path) -> dict[str, Any]:
    return _embed_case(tmp, "openai/zeros", "all-zero vectors")


def case_secret_in_api_base(tmp: Path) -> dict[str, Any]:
    toml = tmp / "scelmo.toml"
    toml.write_text(f'[describe]\nmodel = "openai/gpt-4o-mini"\napi_base = "http://user:{PASSWORD}@127.0.0.1:9/v1"\n'
                    f'options = {{ retries = 0 }}\n[cache]\npath = "{tmp / "c.sqlite"}"\n')
    _rc, shown = _cli(["--config", str(toml), "config", "show"], env={"OPENAI_API_KEY": KEY})
    _rc2, err = _cli(["--config", str(toml), "describe", "genes", "CD3E", "-o", str(tmp / "d.tsv")],
                     env={"OPENAI_API_KEY": KEY}, timeout=120)
    leaks = [w for w, t in (("config show", shown), ("describe error", err)) if PASSWORD in t or KEY in t]
    return {"measure": "secret printed by: " + (", ".join(leaks) if leaks else "nothing"), "ok": not leaks}


_PBMC: dict[str, tuple[Path, Path]] = {}


def _pbmc(_tmp: Path) -> tuple[Path, Path]:
    """An input .h5ad (pbmc68k counts) and its gene table (``scelmo embed-genes``, offline default); made once."""
    if "x" not in _PBMC:
        import scanpy as sc

        where = Path(tempfile.mkdtemp(prefix="scelmo-battery-data-"))
        a = sc.datasets.pbmc68k_reduced()
        a = sc.AnnData(a.raw.X.copy(), obs=a.obs[[]].copy(), var=a.raw.var[[]].copy())
        path = where / "in.h5ad"
        a.write_h5ad(path)
        genes = where / "genes"
        rc, out = _cli(["embed-genes", str(path), "-o", str(genes)])
        if rc != 0:
            raise RuntimeError(out[-400:])
        _PBMC["x"] = (path, genes)
    return _PBMC["x"]


def _can_mount_tmpfs(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp / "probe"
    probe.mkdir(exist_ok=True)
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                       capture_output=True)
    return r.returncode == 0


def case_disk_full(tmp: Path, *, backed: bool) -> dict[str, Any]:
    if not _can_mount_tmpfs(tmp):
        return {"measure": "not measured: cannot mount a tmpfs here", "ok": None}
    inp, genes = _pbmc(tmp)
    mnt = tmp / ("full_b" if backed else "full")
    mnt.mkdir()
    args = ["embed-cells", str(inp), "-o", str(mnt / "out.h5ad"), "--gene-embeddings", str(genes)]
    if backed:
        args.append("--backed")
    script = (f'mount -t tmpfs -o size=1m tmpfs "{mnt}" || exit 99\n'
              f'"{sys.executable}" -m scelmo --no-progress "$@" 2>"{mnt}.stderr"\n'
              f'rc=$?\nls -A "{mnt}" >"{mnt}.ls"\nexit $rc\n')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *args], capture_output=True, text=True,
                       timeout=600, cwd=tmp)
    if r.returncode == 99:
        return {"measure": "not measured: mount failed", "ok": None}
    err = Path(f"{mnt}.stderr").read_text()
    left = Path(f"{mnt}.ls").read_text().split()
    lines = len([ln for ln in err.splitlines() if ln.strip()])
    tb = _traceback_in(err)
    crashed = r.returncode < 0 or r.returncode > 128
    ok = r.returncode != 0 and not tb and not left and not crashed and lines <= 3
    return {"measure": f"exit {r.returncode}, {lines} stderr line(s){', traceback' if tb else ''}, "
                       f"files left: {left or 'none'}", "ok": ok}


def case_describe_all_fail(tmp: Path) -> dict[str, Any]:
    with SRV.FakeLLMServer() as s:
        toml = tmp / "scelmo.toml"
        toml.write_text(f'[describe]\nmodel = "openai/refuse"\napi_base = "{s.openai_base}"\n'
                        f'options = {{ retries = 0 }}\n[cache]\npath = "{tmp / "c.sqlite"}"\n')
        rc, out = _cli(["--config", str(toml), "describe", "genes", "CD3E", "LYZ", "-o", str(tmp / "d.tsv")],
                       timeout=120)
    return {"measure": f"every item refused: exit {rc}; output written: {(tmp / 'd.tsv').exists()}", "ok": rc != 0}


def case_overwrite(tmp: Path) -> dict[str, Any]:
    inp, genes = _pbmc(tmp)
    out = tmp / "out.h5ad"
    out.write_bytes(b"precious")
    rc, text = _cli(["embed-cells", str(inp), "-o", str(out), "--gene-embeddings", str(genes)])
    kept = out.read_bytes() == b"precious"
    return {"measure": f"existing OUTPUT without --overwrite: exit {rc}, file kept: {kept}", "ok": rc != 0 and kept}


def case_csv_output(tmp: Path) -> dict[str, Any]:
    inp, genes = _pbmc(tmp)
    rc, text = _cli(["embed-cells", str(inp), "-o", str(tmp / "out.csv"), "--gene-embeddings", str(genes)])
    wrote = (tmp / "out.csv").exists()
    head = (tmp / "out.csv").read_bytes()[:8] if wrote else b""
    return {"measure": f"-o out.csv: exit {rc}, wrote {'HDF5 bytes' if head.startswith(bytes([0x89]) + b'HDF') else ('a file' if wrote else 'nothing')}",
            "ok": rc != 0 and not wrote}


def case_misspelt_key(tmp: Path) -> dict[str, Any]:
    rc, text = _cli(["--set", "agregate.method=aa", "config", "show"])
    hint = "aggregate" in text and ("did you mean" in text.lower() or "mean" in text.lower())
    return {"measure": f"--set agregate.method=aa: exit {rc}; suggests 'aggregate': {hint}", "ok": hint}


def case_config_show_invalid(tmp: Path) -> dict[str, Any]:
    toml = tmp / "scelmo.toml"
    toml.write_text('[aggregate]\nchunk_size = "lots"\n')
    rc, text = _cli(["--config", str(toml), "config", "show"])
    named = "chunk_size" in text.split("lots", 1)[-1]
    return {"measure": f"config show with an invalid value: exit {rc}, shows the value: {'lots' in text}, "
                       f"then names the bad key: {named}", "ok": "lots" in text and named}


def _formats_input(tmp: Path, kind: str) -> Path:
    import anndata as ad
    import scanpy as sc

    a = sc.datasets.pbmc68k_reduced()
    a = ad.AnnData(a.raw.X.copy(), obs=a.obs[[]].copy(), var=a.raw.var[[]].copy())
    if kind == "zarr":
        p = tmp / "in.zarr"
        a.write_zarr(p)
        return p
    import scipy.io
    import scipy.sparse as sp

    d = tmp / "mtx"
    d.mkdir()
    scipy.io.mmwrite(str(d / "matrix.mtx"), sp.csr_matrix(a.X).T.tocoo())
    (d / "genes.tsv").write_text("".join(f"{g}\t{g}\n" for g in a.var_names))
    (d / "barcodes.tsv").write_text("".join(f"{c}\n" for c in a.obs_names))
    return d


def case_read_format(tmp: Path, kind: str) -> dict[str, Any]:
    inp = _formats_input(tmp, kind)
    _p, genes = _pbmc(tmp)
    rc, text = _cli(["embed-cells", str(inp), "-o", str(tmp / "out.h5ad"), "--gene-embeddings", str(genes)])
    return {"measure": f"embed-cells on a .{kind} input: exit {rc}" + ("" if rc == 0 else f" ({text.strip().splitlines()[-1][:120]})"),
            "ok": rc == 0}


CASES: list[tuple[str, str, Callable[[Path], dict[str, Any]]]] = [
    ("1", "describe: cache ignores the endpoint", case_cache_endpoint),
    ("1", "embed: cache ignores the endpoint", case_cache_embed_endpoint),
    ("1", "embed: cache ignores `dimensions`", case_cache_options),
    ("2", "no OPENAI_API_KEY, remote model", case_missing_key),
    ("2", "loopback gateway that needs the configured key", case_loopback_key),
    ("3", "server drips one byte per 0.1 s", case_drip),
    ("4", "refusal 'I apologize ...' cached", case_apology),
    ("4", "embedding of the wrong length", case_wrong_dimensions),
    ("4", "all-zero embedding vectors", case_zero_vectors),
    ("5", "embed-cells to a full 1 MB tmpfs", lambda t: case_disk_full(t, backed=False)),
    ("5", "embed-cells --backed to a full 1 MB tmpfs", lambda t: case_disk_full(t, backed=True)),
    ("6", "password inside api_base", case_secret_in_api_base),
    ("10", "describe: every item fails", case_describe_all_fail),
    ("10", "embed-cells over an existing output", case_overwrite),
    ("10", "embed-cells -o out.csv", case_csv_output),
    ("10", "misspelt config key", case_misspelt_key),
    ("10", "config show on an invalid config", case_config_show_invalid),
    ("14", "read .zarr input", lambda t: case_read_format(t, "zarr")),
    ("14", "read a 10x .mtx directory", lambda t: case_read_format(t, "mtx")),
]


def run(label: str, only: list[str] | None) -> list[dict[str, Any]]:
    import scelmo

    rows = []
    for item, name, fn in CASES:
        if only and not any(o in name for o in only):
            continue
        tmp = Path(tempfile.mkdtemp(prefix="scelmo-battery-"))
        t = time.perf_counter()
        try:
            res = fn(tmp)
        except Exception as exc:  # noqa: BLE001 - a case that cannot even run is a result too
            res = {"measure": "case failed to run: " + _err(exc), "ok": False,
                   "trace": traceback.format_exc(limit=3)}
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
        res["measure"] = _scrub(res["measure"])
        res.update({"item": item, "case": name, "wall_s": round(time.perf_counter() - t, 2)})
        rows.append(res)
        mark = {True: "ok", False: "FAIL", None: "n/a"}[res["ok"]]
        print(f"[{label}] #{item:>2} {name:48s} {mark:4s} {res['measure']}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    cli_file = subprocess.run([sys.executable, "-c", "import scelmo; print(scelmo.__file__)"], capture_output=True,
                              text=True, cwd=tempfile.gettempdir()).stdout.strip()
    # which scelmo ran (this checkout or the one on PYTHONPATH), without machine paths
    def origin(file: str) -> str:
        return "this checkout" if Path(file).resolve().parents[1] == ROOT else "PYTHONPATH"

    where, cli_where = origin(scelmo.__file__), origin(cli_file)
    payload = {"label": label, "scelmo_from": where, "cli_scelmo_from": cli_where,
               "python": sys.version.split()[0], "rows": rows}
    tmp_out = OUT / f".{label}.json.tmp"
    tmp_out.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp_out, OUT / f"{label}.json")
    return rows


def table() -> None:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    before, after = runs.get("before", {}).get("rows", []), runs.get("after", {}).get("rows", [])
    b = {r["case"]: r for r in before}
    lines = ["# Fault battery: before and after the trust fixes (issue 12)", "",
             "Commands (see the module docstring): the `before` run uses commit a0df378 (the last commit "
             "before the fixes) through PYTHONPATH, the `after` run this checkout; both face the same loopback "
             "server and a real 1 MB tmpfs.", "",
             "| # | case | before | after | fixed |", "|---|---|---|---|---|"]
    for r in after:
        old = b.get(r["case"], {})
        mark = {True: "yes", False: "**no**", None: "n/a"}[r["ok"]]
        lines.append(f"| {r['item']} | {r['case']} | {old.get('measure', '-')} | {r['measure']} | {mark} |")
    path = OUT / "results.md"
    path.write_text("\n".join(lines) + "\n")
    print(path.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--only", nargs="*", help="run the cases whose name contains one of these")
    ap.add_argument("--table", action="store_true", help="merge before.json/after.json into results.md")
    args = ap.parse_args()
    if args.table:
        table()
    else:
        run(args.label, args.only)


if __name__ == "__main__":
    main()
