"""benchmarks/RESULTS.md is generated: the committed file is what ``benchmarks/report.py`` assembles from
the section files and notes.md (a hand edit there is lost on the next rebuild), and each section's machine
line names the CPU's vector ISA only where the benchmark recorded it."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCH))
    try:
        import report as mod
        yield mod
    finally:
        sys.path.remove(str(BENCH))


def test_committed_results_md_is_what_report_py_assembles(report):
    committed = (BENCH / "RESULTS.md").read_text()
    assert committed == report.assemble(), (
        "benchmarks/RESULTS.md differs from `python benchmarks/report.py`'s output: edit the section file in "
        "benchmarks/results/ (or notes.md) and rebuild, not RESULTS.md")


def test_machine_line_names_the_recorded_isa_and_never_guesses_it(report):
    base = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 2, "memory_gib": 23.5, "torch": "2.13.0+cpu",
            "cuda": None, "python": "3.11.7"}
    avx2 = report.machine_line(base | {"cpu_isa": ["avx2"], "bf16_native": False})
    assert "AVX2, no native bf16" in avx2 and "AVX-512" not in avx2
    amx = report.machine_line(base | {"cpu_isa": ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"],
                                      "bf16_native": True})
    assert "AMX, native bf16" in amx
    assert "AVX-512, no native bf16" in report.machine_line(base | {"cpu_isa": ["avx2", "avx512f"],
                                                                    "bf16_native": False})
    old = report.machine_line(base | {"bf16_native": False})  # a JSON from before cpu_isa was kept
    assert "vector ISA not recorded" in old and "AVX2" not in old
