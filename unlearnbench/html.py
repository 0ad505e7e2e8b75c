"""The leaderboard as one self-contained HTML page: no CDN, no external file, works offline.

One table per scenario, a column per metric with an arrow for the better direction, mean ± std
over seeds, reference rows (``base``, ``none``) shaded, failed cells shown as failed. Clicking a
header sorts by it (again: reverse). ``leaderboard.html#sort=KEY`` (or ``#sort=KEY:desc``)
opens sorted, which is also how the headless-browser check drives it.
"""

from __future__ import annotations

import html
import math
import re

from .metrics import EDIT_METRICS, METRICS

_LABELS = {"ds": "DS", "forget_rouge1": "forget R1", "retain_rouge1": "retain R1", "forget_rougeL": "forget RL",
           "retain_rougeL": "retain RL", "forget_mrr": "forget MRR", "retain_mrr": "retain MRR",
           "forget_thr": "forget THR", "retain_thr": "retain THR", "forget_es": "forget ES", "retain_es": "retain ES",
           "forget_paraphrase_rouge1": "para forget R1", "forget_reverse_rouge1": "reverse forget R1",
           "neighbour_retain_rouge1": "neighbour R1", "far_retain_rouge1": "far R1",
           "forget_refusal_rate": "refusal", "retain_refusal_rate": "over-refusal", "utility": "utility"}

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:2em}
table{border-collapse:collapse;font-size:13px;margin-top:.5em}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
th:hover{background:#e6e6e6} th.sorted{background:#dde8f5}
td.name,th.name{text-align:left} tr.reference td{background:#f7f7ef;font-style:italic}
tr.failed td{background:#fbeaea;color:#a33} .std{color:#888;font-size:11px}
.arrow{color:#2a6;font-weight:bold} .note{color:#555;font-size:13px;max-width:60em}
.caution{background:#fff6e0;border-left:4px solid #e0a000;padding:.4em .8em;font-size:13px;max-width:60em}
"""

_JS = """
function sortTable(table, key, desc){
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  const val = r => { const c = r.querySelector('td[data-key="'+key+'"]');
    const v = c ? parseFloat(c.dataset.value) : NaN; return isNaN(v) ? null : v; };
  const txt = r => { const c = r.querySelector('td[data-key="'+key+'"]'); return c ? c.textContent : ''; };
  rows.sort((a, b) => {
    const x = val(a), y = val(b);
    if (x === null && y === null) return txt(a).localeCompare(txt(b)) * (desc ? -1 : 1);
    if (x === null) return 1; if (y === null) return -1;
    return desc ? y - x : x - y; });
  rows.forEach(r => body.appendChild(r));
  table.querySelectorAll('th').forEach(th => th.classList.toggle('sorted', th.dataset.key === key));
  table.dataset.sortKey = key; table.dataset.sortDesc = desc ? '1' : '0';
}
document.querySelectorAll('table.board th').forEach(th => th.addEventListener('click', () => {
  const t = th.closest('table'); const same = t.dataset.sortKey === th.dataset.key;
  sortTable(t, th.dataset.key, same ? t.dataset.sortDesc !== '1' : th.dataset.hib === '1');
}));
const m = location.hash.match(/sort=([\\w.-]+)(:desc)?/);
if (m) document.querySelectorAll('table.board').forEach(t => sortTable(t, m[1], !!m[2]));
"""


def _cell(key: str, mean: float, std: float, n: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return f'<td data-key="{key}" data-value="">–</td>'
    digits = 1 if key in ("ds", "apply_seconds") else 3
    std_html = f' <span class="std">± {std:.{digits}f}</span>' if n > 1 else ""
    return f'<td data-key="{key}" data-value="{mean:.6g}">{mean:.{digits}f}{std_html}</td>'


def _inline(text: str) -> str:
    """Escaped ``text`` with Markdown's **bold** and `code` as HTML."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def leaderboard_html(rows: list[dict], keys: list[str], higher_is_better: dict[str, bool],
                     sources: list[str] = (), cautions: list[str] = ()) -> str:
    """``cautions``: sentences (Markdown with **bold** and `code`) shown above the tables, e.g. that the
    cells come from several library versions (:func:`unlearnbench.leaderboard.cautions`)."""
    esc = html.escape
    head = ['<th class="name" data-key="rank" data-hib="0">rank</th>',
            '<th class="name" data-key="method" data-hib="0">method</th>',
            '<th class="name" data-key="kind" data-hib="0">kind</th>']
    for k in keys:
        hib = higher_is_better.get(k, True)
        meaning = METRICS[k].meaning if k in METRICS else EDIT_METRICS[k].meaning if k in EDIT_METRICS else k
        head.append(f'<th data-key="{esc(k)}" data-hib="{int(hib)}" title="{esc(meaning)}">{esc(_LABELS.get(k, k))} '
                    f'<span class="arrow">{"↑" if hib else "↓"}</span></th>')
    head.append('<th data-key="apply_seconds" data-hib="0" title="wall time of apply">apply s '
                '<span class="arrow">↓</span></th><th data-key="n_seeds" data-hib="1">seeds</th>')
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>unlearnbench leaderboard</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>unlearnbench leaderboard</h1>",
             '<p class="note">Ranked by Deviation Score DS = 100·√(forget R1² + (1 − retain R1)²) within each '
             "scenario (lower is better); mean ± std over seeds. ↑/↓: which direction is better (hover a header "
             "for the metric's meaning; click to sort). Reference rows: <i>base</i> = the model before the "
             "implant, <i>none</i> = the implanted model before unlearning.</p>"]
    if sources:
        parts.append(f'<p class="note">Results: {esc(", ".join(sources))}</p>')
    parts += [f'<p class="caution">{_inline(c)}</p>' for c in cautions]
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        parts += [f"<h2>{esc(scen)}</h2>", f'<table class="board" data-scenario="{esc(scen)}"><thead><tr>',
                  "".join(head), "</tr></thead><tbody>"]
        for r in (x for x in rows if x["scenario"] == scen):
            cls = "failed" if r["status"] != "ok" else ("reference" if r["kind"] == "reference" else "")
            rank = r.get("rank")
            tds = [f'<td class="name" data-key="rank" data-value="{rank if rank else ""}">{rank or ("ref" if cls == "reference" else "–")}</td>',  # noqa: E501
                   f'<td class="name" data-key="method">{esc(r["method"])}</td>',
                   f'<td class="name" data-key="kind">{esc(r["kind"])}</td>']
            if r["status"] != "ok":
                err = esc(r.get("error") or "failed")
                tds += [f'<td data-key="{esc(k)}" data-value="" title="{err}">failed</td>' for k in keys]
                tds += [f'<td data-key="apply_seconds" data-value="" title="{err}">failed</td>',
                        f'<td data-key="n_seeds" data-value="0">0 ({r["n_failed"]} failed)</td>']
            else:
                tds += [_cell(k, r.get(k), r.get(k + "_std", 0.0), r["n_seeds"]) for k in keys]
                tds += [_cell("apply_seconds", r["apply_seconds"], r["apply_seconds_std"], r["n_seeds"]),
                        f'<td data-key="n_seeds" data-value="{r["n_seeds"]}">{r["n_seeds"]}</td>']
            parts.append(f'<tr class="{cls}" data-method="{esc(r["method"])}">' + "".join(tds) + "</tr>")
        parts.append("</tbody></table>")
    parts += [f"<script>{_JS}</script>", "</body></html>"]
    return "\n".join(parts)
