"""audit.html: one self-contained page (no scripts, no external files) that opens offline.

Histograms are PNGs drawn with matplotlib's Agg canvas and embedded as base64 data URIs, like the
thumbnails; every text that comes from data (ids, group names, URIs) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html

import numpy as np

from rayood.audit.verdict import verdict_line
from rayood.evaluation.plots import histogram_png

MAX_GROUP_CURVES = 8
STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1200px; }
.verdict { font-size: 1.3em; font-weight: bold; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.low { background: #fdd; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; width: 140px; font-size: 11px; word-break: break-all; }
figure img { width: 128px; height: 128px; image-rendering: pixelated; border: 1px solid #999; }
.hist img { width: 420px; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def _p_cell(result: dict) -> str:
    """A p-value cell, shaded when below 0.05 (one test's level; no correction for the many shown)."""
    if "pvalue" not in result:
        return f"<td>{_e(result.get('skipped', ''))}</td>"
    low = ' class="low"' if result["pvalue"] < 0.05 else ""
    return f"<td{low}>{_num(result['pvalue'], 3)}</td>"


def histogram_uri(name: str, reference: np.ndarray, target: np.ndarray, groups: dict[str, np.ndarray]) -> str:
    """Reference and target densities of one score (and up to MAX_GROUP_CURVES target groups), as a data URI."""
    curves = {f"reference ({reference.size})": reference, f"target ({target.size})": target}
    curves.update({f"{group} ({values.size})": values for group, values in list(groups.items())[:MAX_GROUP_CURVES]})
    return "data:image/png;base64," + base64.b64encode(histogram_png(name, curves)).decode("ascii")


def _score_table(audit: dict) -> str:
    rows = [
        "<tr><th>score</th><th>KS D</th><th>KS p</th><th>reference flagged</th><th>target flagged</th>"
        "<th>expected</th><th>flag-rate p</th></tr>"
    ]
    for name, result in audit["scores"].items():
        ks, flagged, reference = result["ks"], result["flagged"], audit["reference_flagged"][name]
        rows.append(
            f"<tr><td>{_e(name)}</td><td>{_num(ks.get('statistic'))}</td>{_p_cell(ks)}"
            f"<td>{_num(reference.get('fraction'))}</td><td>{_num(flagged.get('fraction'))}</td>"
            f"<td>{_num(flagged.get('expected'))}</td>{_p_cell(flagged)}</tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _mmd_text(result: dict) -> str:
    if "skipped" in result:
        return _e(result["skipped"])
    return (
        f"MMD&sup2; {_num(result['statistic'])}, permutation p {_num(result['pvalue'], 3)} "
        f"({result['permutations']} permutations; {result['reference_rows']} reference and {result['target_rows']} "
        f"target embeddings; RBF bandwidth {_num(result['bandwidth'])})"
    )


def _group_table(audit: dict) -> str:
    score = audit["decision_score"]
    rows = [
        f"<tr><th>{_e(audit['by'])}</th><th>rows</th><th>KS D ({_e(score)})</th><th>KS p</th>"
        "<th>flagged</th><th>flag-rate p</th><th>MMD&sup2;</th><th>MMD p</th></tr>"
    ]
    for group, result in audit["groups"].items():
        ks, flagged, mmd = result["scores"][score]["ks"], result["scores"][score]["flagged"], result["mmd"]
        rows.append(
            f"<tr><td>{_e(group)}</td><td>{_e(result['rows'])}</td><td>{_num(ks.get('statistic'))}</td>{_p_cell(ks)}"
            f"<td>{_num(flagged.get('fraction'))}</td>{_p_cell(flagged)}<td>{_num(mmd.get('statistic'))}</td>{_p_cell(mmd)}</tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def _thumbnails(rows: list[dict], score: str) -> str:
    if not rows:
        return "<p>No scored target images.</p>"
    figures = []
    for row in rows:
        image = f'<img src="{row["thumbnail"]}" alt="{_e(row["id"])}">' if row["thumbnail"] else "<p>(image not readable)</p>"
        caption = f"{_e(row['id'])}<br>score {_num(row['score'])}, p {_num(row['pvalue'], 3)}"
        figures.append(f"<figure>{image}<figcaption>{caption}</figcaption></figure>")
    return f"<p>Highest score_{_e(score)} first, as the model saw them.</p><div class=\"grid\">{''.join(figures)}</div>"


def render_html(audit: dict, histograms: dict[str, str], thumbnails: list[dict]) -> str:
    """The page for ``audit`` (audit.json's content), with histogram and thumbnail data URIs."""
    target, reference = audit["target"], audit["reference"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>rayood drift audit</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>rayood drift audit</h1>",
        *([f'<p class="verdict">{_e(verdict_line(audit["verdict"]))}</p>'] if "verdict" in audit else []),
        f"<p>Reference: {_e(reference['report'])} ({_e(reference['scored_rows'])} scored, {_e(reference['errors'])} errors)<br>"
        f"Target: {_e(target['report'])} ({_e(target['scored_rows'])} scored, {_e(target['errors'])} errors)<br>"
        f"Bundle {_e(audit['bundle_id'])}; flags at alpha {_e(audit['alpha'])}; decision score {_e(audit['decision_score'])}</p>",
        "<h2>Scores: target against reference</h2>",
        "<p>KS: two-sample Kolmogorov-Smirnov on the score values. Flagged: fraction with p &le; alpha against the "
        "bundle's calibration set; expected is that fraction for ID images, and the flag-rate p tests for more "
        "(beta-binomial, exact for conformal p-values). Shaded: p &lt; 0.05, uncorrected for the number of tests; "
        "the verdict above is the one that accounts for them (Holm).</p>",
        _score_table(audit),
        f"<h2>Backbone embeddings</h2><p>{_mmd_text(audit['mmd'])}</p>",
    ]
    if "groups" in audit:
        parts += [f"<h2>Per group of {_e(audit['by'])}</h2><p>Each target group against the whole reference.</p>", _group_table(audit)]
    parts.append("<h2>Score distributions</h2><div class=\"grid hist\">")
    parts += [f'<img src="{uri}" alt="histogram of score_{_e(name)}">' for name, uri in histograms.items()]
    parts.append("</div><h2>Most OOD target images</h2>")
    parts.append(_thumbnails(thumbnails, audit["decision_score"]))
    parts.append("</body></html>")
    return "\n".join(parts)
