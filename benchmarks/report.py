"""Assemble ``benchmarks/RESULTS.md`` from the sections the benchmark scripts wrote.

    python benchmarks/report.py
"""

from __future__ import annotations

import json

from common import HERE, RESULTS

ORDER = ["eval_throughput", "finetune_throughput", "method_cost", "end_to_end"]


def main():
    sections = [RESULTS / f"{n}.md" for n in ORDER if (RESULTS / f"{n}.md").exists()]
    if not sections:
        raise SystemExit("no benchmark results yet: run the bench_*.py scripts first")
    m = json.loads((RESULTS / f"{sections[0].stem}.json").read_text())["machine"]
    head = ["# Benchmark results", "",
            f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
            f"{'GPU ' + m['cuda'] if m['cuda'] else 'no GPU'}; native bf16: {'yes' if m['bf16_native'] else 'no'}; "
            f"torch {m['torch']}, Python {m['python']}.", "",
            "Each section is written by one script in `benchmarks/` (numbers measured side by side in one "
            "process); `python benchmarks/report.py` rebuilds this file.", ""]
    body = [p.read_text() for p in sections]
    notes = HERE / "notes.md"
    if notes.exists():
        body.append(notes.read_text())
    (HERE / "RESULTS.md").write_text("\n".join(head) + "\n" + "\n".join(body))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
