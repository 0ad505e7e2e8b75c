"""Assemble ``benchmarks/RESULTS.md`` from the sections the benchmark scripts wrote.

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import re

from common import HERE, RESULTS

ORDER = ["eval_throughput", "generation", "eval_profile", "eval_shared_prompt", "finetune_throughput",
         "implant_recipes", "method_cost", "end_to_end", "phases",
         "step_profile", "editing_stats", "leaderboard_cost", "lean_training", "full_batch", "dpo_recompute",
         "rows_per_pass", "ukl_rows", "gqa", "gqa_npo", "gqa_ukl", "gqa_dpo", "kl", "blur_memory", "rome_vs_easyedit",
         "plan_validation", "plan_validation_cuda", "plan_paper_scale"]


def isa_text(m: dict) -> str:
    """The CPU's widest vector ISA as the JSON recorded it (``cpu_isa``, from /proc/cpuinfo) and whether bf16
    was native; JSONs written before ``cpu_isa`` was kept say so rather than guess an ISA from the bf16 flag."""
    from unlearnbench.results import widest_isa

    bf16 = "native bf16" if m.get("bf16_native") else "no native bf16"
    if "cpu_isa" in m:
        return f"{widest_isa(m['cpu_isa'])}, {bf16}"
    return f"{bf16} ({'AMX or AVX512-BF16; ' if m.get('bf16_native') else ''}vector ISA not recorded)"


def machine_line(m: dict) -> str:
    isa = isa_text(m)
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
            f"{'GPU ' + m['cuda'] if m.get('cuda') else 'no GPU'}; {isa}; torch {m['torch']}, Python {m['python']}")


def assemble() -> str:
    """RESULTS.md's text: every section file in ORDER under its machine line, then notes.md."""
    sections = [RESULTS / f"{n}.md" for n in ORDER if (RESULTS / f"{n}.md").exists()]
    if not sections:
        raise SystemExit("no benchmark results yet: run the bench_*.py scripts first")
    head = ["# Benchmark results", "",
            "Each section is written by one script in `benchmarks/` (numbers measured side by side in one "
            "process) and names the machine that produced it; `python benchmarks/report.py` rebuilds this file.",
            ""]
    body = []
    for i, p in enumerate(sections, 1):
        text = p.read_text().rstrip().split("\n")
        m = json.loads((RESULTS / f"{p.stem}.json").read_text())["machine"]
        title = re.sub(r"^##\s*(\d+\.\s*)?", f"## {i}. ", text[0])  # numbered here, in ORDER
        # a script that names the machine itself: its line gives way to this one (once, not twice)
        rest = re.sub(r"^\s*\*Measured on:[^\n]*\*\s*", "", "\n".join(text[1:])).strip("\n")
        body.append("\n".join([title, "", f"*Measured on: {machine_line(m)}.*", "", rest]) + "\n")
    notes = HERE / "notes.md"
    if notes.exists():
        body.append(notes.read_text())
    return "\n".join(head) + "\n" + "\n".join(body)


def main():
    (HERE / "RESULTS.md").write_text(assemble())
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
