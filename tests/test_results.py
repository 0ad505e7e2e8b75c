"""Results you can look at and submit: schema + validate, merged leaderboard (MD/CSV/HTML), plots,
the headless-browser check of the HTML page, and the notebooks."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnbench.leaderboard import write_leaderboard
from unlearnbench.runner import Runner
from unlearnbench.schema import validate_dir

CFG = {
    "name": "t", "model": "tiny-random-llama", "device": "cpu",
    "data": {"preset": "pistol-mini", "seed": 0},
    "finetune": {"epochs": 1, "lr": 1e-3, "n_anchor": 4, "n_refusal": 8},
    "eval": {"batch_size": 64, "max_new_tokens": 4, "qa_max_new_tokens": 4, "utility_limit": 5},
    "methods": [{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}},
                {"name": "gd", "params": {"epochs": 1, "lr": 1e-4}},
                {"name": "ga", "label": "broken", "params": {"epochs": 1, "lr": 1e-4}}],
    "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}],
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory, grid_config):
    """A small grid, two seeds, with one row whose cells failed."""
    tmp = tmp_path_factory.mktemp("res")
    out = Runner(grid_config(CFG, tmp), out_dir=tmp / "run", progress=False).run()
    # failed cells, as the runner writes them when a method raises
    for seed in (0, 1):
        f = out / "cells" / f"broken__hub__seed{seed}.json"
        rec = json.loads(f.read_text())
        rec.update(status="failed", error="ValueError: boom")
        for k in ("metrics", "cost", "per_example", "attacks", "steps", "method_info"):
            rec.pop(k, None)
        f.write_text(json.dumps(rec))
    return out


def test_results_validate(results):
    assert validate_dir(results) == []
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "validate", str(results)], capture_output=True, text=True)
    assert r.returncode == 0 and "valid" in r.stdout


@pytest.mark.parametrize("mutate,expect", [
    (lambda r: r.pop("dataset"), "(top level): 'dataset' is a required property"),
    (lambda r: r.__setitem__("seed", "zero"), "seed: 'zero' is not of type 'integer'"),
    (lambda r: r["metrics"]["ds"].pop("higher_is_better"), "metrics.ds: 'higher_is_better' is a required property"),
    (lambda r: r["dataset"].__setitem__("fingerprint", "abc"), "dataset.fingerprint: 'abc' does not match"),
])
def test_validate_names_file_and_field(results, tmp_path, mutate, expect):
    bad = tmp_path / "bad"
    shutil.copytree(results, bad)
    f = bad / "cells" / "ga__hub__seed0.json"
    rec = json.loads(f.read_text())
    mutate(rec)
    f.write_text(json.dumps(rec))
    problems = validate_dir(bad)
    assert len(problems) == 1 and problems[0].startswith(str(f)) and expect in problems[0], problems
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "validate", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and expect in r.stderr


def test_leaderboard_merges_and_writes_everything(results, tmp_path):
    # a second folder: the same grid under another experiment with one more seed of `gd`
    other = tmp_path / "other"
    (other / "cells").mkdir(parents=True)
    rec = json.loads((results / "cells" / "gd__hub__seed1.json").read_text())
    rec.update(seed=7, created="2099-01-01T00:00:00")
    (other / "cells" / "gd__hub__seed7.json").write_text(json.dumps(rec))
    out = tmp_path / "board"
    paths = write_leaderboard([results, other], out_dir=out)
    for name in ("markdown", "csv", "html", "forget_vs_retain", "ds_bars", "leak_heatmap", "graph_hub", "cost_vs_ds"):
        assert paths[name].exists() and paths[name].stat().st_size > 0, name
    for png in (out / "plots").glob("*.png"):
        assert png.with_suffix(".svg").exists()
    csv_rows = (out / "leaderboard.csv").read_text().splitlines()
    gd_hub = next(line for line in csv_rows if line.startswith("hub,") and ",gd," in line)
    assert ",3,0," in gd_hub  # three seeds merged (0, 1 and 7), none failed
    page = (out / "leaderboard.html").read_text()
    assert "<script src" not in page and "http" not in page.split("<script>")[1]  # self-contained
    for key in ("ds", "forget_rouge1", "retain_rouge1", "utility", "forget_mrr"):
        assert f'data-key="{key}"' in page
    assert page.count('class="arrow"') >= 18  # one per metric (and apply time)
    assert 'class="reference" data-method="base"' in page and 'class="reference" data-method="none"' in page
    assert 'class="failed" data-method="broken"' in page and "ValueError: boom" in page
    assert "±" in page  # mean ± std over seeds


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium (Debian: apt-get install chromium)")
def test_html_in_headless_chromium(results, tmp_path):
    out = tmp_path / "board"
    write_leaderboard(results, out_dir=out, plots=False)
    page = (out / "leaderboard.html").resolve()
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + str(tmp_path / "prof")]
    shot = tmp_path / "shot.png"
    r = subprocess.run(base + [f"--screenshot={shot}", "--window-size=1400,900", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000, r.stderr[-2000:]

    import re

    def order(sort, key="forget_mrr"):
        """(method, value of `key`) per row of the hub table, in the order the browser shows them."""
        r = subprocess.run(base + ["--dump-dom", page.as_uri() + sort], capture_output=True, text=True, timeout=120)
        dom = r.stdout
        table = dom[dom.index('data-scenario="hub"'):]
        table = table[:table.index("</table>")]
        rows = re.findall(r'<tr class="[^"]*" data-method="([^"]+)">(.*?)</tr>', table, flags=re.S)
        out = []
        for method, cells in rows:
            v = re.search(rf'data-key="{key}" data-value="([^"]*)"', cells).group(1)
            out.append((method, float(v) if v else None))
        return out, table

    default, table = order("")
    assert "<td" in table and {m for m, _ in default} >= {"ga", "gd", "none", "base", "broken"}  # rendered
    asc, _ = order("#sort=forget_mrr")
    desc, _ = order("#sort=forget_mrr:desc")
    vals_asc = [v for _, v in asc if v is not None]
    vals_desc = [v for _, v in desc if v is not None]
    assert len(set(vals_asc)) >= 3  # distinct values, so the order is meaningful
    assert vals_asc == sorted(vals_asc) and vals_desc == sorted(vals_desc, reverse=True)
    assert [m for m, _ in asc] != [m for m, _ in default] or [m for m, _ in desc] != [m for m, _ in default]
    assert asc[-1][0] == desc[-1][0] == "broken"  # failed cells (no value) sort last either way


@pytest.mark.parametrize("name", ["01_quickstart", "02_structure_matters", "03_bring_your_own_method"])
def test_notebook_runs(name, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    path = Path(__file__).resolve().parents[1] / "notebooks" / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # what the notebook ran is a valid results folder whose cells all finished
    from unlearnbench.results import load_results

    folders = [p.parent for p in (tmp_path / "results" / "notebooks").rglob("cells")]
    assert folders
    for d in folders:
        assert validate_dir(d) == []
        recs = load_results(d)
        assert all(r["status"] == "ok" for r in recs), [r.get("error") for r in recs]
        assert any(r["kind"] != "reference" for r in recs)


def test_shipped_schema_is_generated_from_the_record_model():
    """One record model: the JSON Schema in the package is what CellRecord generates (rerun
    ``python -m unlearnbench.records`` after changing the model)."""
    from unlearnbench.records import SCHEMA_FILE, json_schema

    assert json.loads(SCHEMA_FILE.read_text(encoding="utf-8")) == json_schema()


def test_record_model_and_schema_agree_on_bad_records():
    """A record the pydantic model refuses, the shipped schema refuses too (and the other way)."""
    import pydantic

    from unlearnbench.records import CellRecord
    from unlearnbench.schema import validate_record

    good = {"schema_version": 3, "experiment": "x", "mode": "edit", "method": "rome", "row": "rome", "kind": "edit",
            "params": {}, "seed": 0,
            "scenario": {"label": "edits-n2", "spec": {"type": "counterfactual_edits", "n": 2},
                         "splits": [{"name": "edits", "forget_edges": ["A_B"], "neighbour_edges": [], "far_edges": []}]},
            "dataset": {"fingerprint": "0" * 64}, "model": {"spec": "m", "finetune_key": None},
            "evaluator_version": 2, "precision": {"implant": None, "evaluation": "fp32", "method": "fp32"},
            "versions": {"unlearnbench": "0", "torch": "0", "transformers": "0"},
            "hardware": {"platform": "p", "python": "3", "cpu_count": 2}, "created": "now", "status": "ok",
            "metrics": {"efficacy": {"value": 1.0, "higher_is_better": True}}, "cost": {"apply_seconds": 1.0}}
    CellRecord.model_validate(good)
    assert validate_record(good) == []
    for bad in ({**good, "status": "done"}, {**good, "metrics": None}, {k: v for k, v in good.items() if k != "cost"},
                {**good, "precision": None}, {**good, "dataset": {"fingerprint": "xyz"}},
                {**good, "metrics": {"efficacy": {"value": 1.0}}}):
        with pytest.raises(pydantic.ValidationError):
            CellRecord.model_validate(bad)
        assert validate_record(bad), bad



def test_cells_record_the_cpu_model_and_its_vector_isa(tmp_path):
    """A cell's time depends on the CPU's vector units (AVX2, AVX-512, native bf16, AMX): its record
    names the CPU and the features it reports."""
    from unlearnbench.results import cpu_model, hardware

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_model(str(info)) == ("AMD EPYC 9R14", ["avx2", "avx512f", "avx512_bf16"])
    info.write_text("model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_model(str(info))[1] == ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    name, isa = cpu_model(str(tmp_path / "absent"))
    assert name and isa == []
    hw = hardware()
    assert isinstance(hw["cpu"], str) and hw["cpu"] and set(hw["cpu_isa"]) <= {"avx2", "avx512f", "avx512_bf16",
                                                                               "amx_tile", "amx_bf16"}
