"""audit.html: one self-contained page (no scripts, no external files) that opens offline.

Histograms are PNGs drawn with matplotlib's Agg canvas and embedded as base64 data URIs, like the
thumbnails; every text that comes from data (ids, group names, URIs) is HTML-escaped.
"""

from __future__ import annotations

import numpy as np

from rayood.audit.verdict import verdict_line
from rayood.evaluation.plots import histogram_png
from rayood.pages.html import Cell, Markup, cell, document, gallery, image, number, png_uri, table, text

MAX_GROUP_CURVES = 8


def _p_cell(result: dict) -> Cell:
    """A p-value cell, shaded when below 0.05 (one test's level; no correction for the many shown)."""
    if "pvalue" not in result:
        return cell(result.get("skipped", ""))
    return cell(number(result["pvalue"], 3), "low" if result["pvalue"] < 0.05 else None)


def histogram_uri(name: str, reference: np.ndarray, target: np.ndarray, groups: dict[str, np.ndarray]) -> str:
    """Reference and target densities of one score (and up to MAX_GROUP_CURVES target groups), as a data URI."""
    curves = {f"reference ({reference.size})": reference, f"target ({target.size})": target}
    curves.update({f"{group} ({values.size})": values for group, values in list(groups.items())[:MAX_GROUP_CURVES]})
    return png_uri(histogram_png(name, curves))


def _score_table(audit: dict) -> Markup:
    rows = []
    for name, result in audit["scores"].items():
        ks, flagged, reference = result["ks"], result["flagged"], audit["reference_flagged"][name]
        rows.append(
            [
                name,
                number(ks.get("statistic")),
                _p_cell(ks),
                number(reference.get("fraction")),
                number(flagged.get("fraction")),
                number(flagged.get("expected")),
                _p_cell(flagged),
            ]
        )
    header = ["score", "KS D", "KS p", "reference flagged", "target flagged", "expected", "flag-rate p"]
    return table(header, rows)


def _mmd_text(result: dict) -> str:
    if "skipped" in result:
        return result["skipped"]
    return (
        f"MMD\u00b2 {number(result['statistic'])}, permutation p {number(result['pvalue'], 3)} "
        f"({result['permutations']} permutations; {result['reference_rows']} reference and {result['target_rows']} "
        f"target embeddings; RBF bandwidth {number(result['bandwidth'])})"
    )


def _group_table(audit: dict) -> Markup:
    score = audit["decision_score"]
    rows = []
    for group, result in audit["groups"].items():
        ks, flagged, mmd = result["scores"][score]["ks"], result["scores"][score]["flagged"], result["mmd"]
        rows.append(
            [
                group,
                result["rows"],
                number(ks.get("statistic")),
                _p_cell(ks),
                number(flagged.get("fraction")),
                _p_cell(flagged),
                number(mmd.get("statistic")),
                _p_cell(mmd),
            ]
        )
    header = [audit["by"], "rows", f"KS D ({score})", "KS p", "flagged", "flag-rate p", "MMD\u00b2", "MMD p"]
    return table(header, rows)


def render_html(audit: dict, histograms: dict[str, str], thumbnails: list[dict]) -> str:
    """The page for ``audit`` (audit.json's content), with histogram and thumbnail data URIs."""
    target, reference = audit["target"], audit["reference"]
    score = audit["decision_score"]
    parts = [
        Markup("<h1>rayood drift audit</h1>"),
        *([Markup(f'<p class="verdict">{text(verdict_line(audit["verdict"]))}</p>')] if "verdict" in audit else []),
        Markup(
            f"<p>Reference: {text(reference['report'])} ({text(reference['scored_rows'])} scored, "
            f"{text(reference['errors'])} errors)<br>Target: {text(target['report'])} ({text(target['scored_rows'])} "
            f"scored, {text(target['errors'])} errors)<br>Bundle {text(audit['bundle_id'])}; flags at alpha "
            f"{text(audit['alpha'])}; decision score {text(score)}</p>"
        ),
        Markup("<h2>Scores: target against reference</h2>"),
        Markup(
            "<p>KS: two-sample Kolmogorov-Smirnov on the score values. Flagged: fraction with p &le; alpha against "
            "the bundle's calibration set; expected is that fraction for ID images, and the flag-rate p tests for "
            "more (beta-binomial, exact for conformal p-values). Shaded: p &lt; 0.05, uncorrected for the number of "
            "tests; the verdict above is the one that accounts for them (Holm).</p>"
        ),
        _score_table(audit),
        Markup(f"<h2>Backbone embeddings</h2><p>{text(_mmd_text(audit['mmd']))}</p>"),
    ]
    if "groups" in audit:
        parts += [
            Markup(f"<h2>Per group of {text(audit['by'])}</h2><p>Each target group against the whole reference.</p>"),
            _group_table(audit),
        ]
    parts.append(Markup('<h2>Score distributions</h2><div class="grid hist">'))
    parts += [image(uri, f"histogram of score_{name}") for name, uri in histograms.items()]
    parts += [
        Markup("</div><h2>Most OOD target images</h2>"),
        Markup(f"<p>Highest score_{text(score)} first, as the model saw them.</p>") if thumbnails else "",
        gallery(
            thumbnails,
            lambda row: [row["id"], f"score {number(row['score'])}, p {number(row['pvalue'], 3)}"],
            "No scored target images.",
        ),
    ]
    return document("rayood drift audit", parts)
