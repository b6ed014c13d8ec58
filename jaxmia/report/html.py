"""``report.html``: the audit for a non-specialist, in one self-contained file.

Every image is embedded as a base64 data URI, so the page can be mailed or archived alone.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path


def _img(path, alt: str) -> str:
    if not path or not Path(path).is_file():
        return ""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


_CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.verdict{font-size:1.25em;padding:.8em 1em;border-radius:6px}
.guilty{background:#fde2e1;border:1px solid #e06c6c} .innocent{background:#e3f4e1;border:1px solid #6cae6c}
.inconclusive{background:#fff4d6;border:1px solid #d9a627} .headline{font-weight:bold;display:block}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:.4em 0;image-rendering:pixelated} .small{color:#666;font-size:.9em}
"""


def write_html_report(report: dict, path) -> Path:
    """Renders an audit ``report`` (the dict of :func:`jaxmia.audit.run_audit`) to ``path``."""
    v = report["verdict"]
    conclusion = report.get("conclusion") or {}
    status = conclusion.get("status") or ("trained" if v.get("reject") else "no_evidence")
    css = {"trained": "guilty", "no_evidence": "innocent", "inconclusive": "inconclusive"}[status]
    out = report.get("outputs", {})
    cdi_out, mia_out = out.get("cdi", {}), out.get("mia", {})
    null = report.get("null_calibration")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>jaxmia audit</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Was this model trained on the published images?</h1>",
        f"<p class='verdict {css}'><span class='headline'>{html.escape(conclusion.get('headline', ''))}</span>"
        f"{html.escape(report['summary'])}</p>",
        *(f"<p class='small'>Caveat: {html.escape(c)}.</p>" for c in conclusion.get("caveats", [])),
        "<h2>The test</h2>",
        "<table>",
        f"<tr><th>p-value</th><td>{html.escape(conclusion.get('p_text') or _fmt(v.get('p_value')))}</td></tr>",
        f"<tr><th>how it was obtained</th><td>{html.escape(str(v.get('method')))}"
        f"{', ' + str(v.get('alternative')) if v.get('alternative') else ''}</td></tr>",
        f"<tr><th>statistic</th><td>{_fmt(v.get('statistic'))}</td></tr>",
        f"<tr><th>direction matches membership</th><td>{_fmt(v.get('is_correct_order'))}</td></tr>",
        f"<tr><th>images per side (n)</th><td>{_fmt(v.get('n_p'))}</td></tr>",
        f"<tr><th>decision level α</th><td>{_fmt(v.get('alpha'))}</td></tr>",
        f"<tr><th>samples per side needed for p ≤ α</th><td>{_fmt(report.get('samples_needed'))}</td></tr>",
        "</table>",
        "<p class='small'>The p-value is the probability of seeing a difference at least this large between "
        "the published set P and the unpublished set U if the model had never been trained on P and P and U "
        "were made the same way. jaxmia's default test is calibrated by construction, so p ≤ 0.01 happens for "
        "an innocent model at most 1% of the time; the checks below test the 'made the same way' part.</p>",
    ]
    parts += _evidence_strength(v)
    parts += _shift_section(report.get("shift"))
    dup = (report.get("data_checks") or {}).get("duplicates")
    if dup:
        counts = {side: dup[side]["duplicates"] for side in ("published", "unpublished")}
        action = {"drop": "dropped, one of each kept", "keep": "kept", "refuse": "refused"}[dup["policy_within_side"]]
        parts.append(
            "<h2>The images</h2><p>No image appears in both P and U (compared by pixel content, whatever the file "
            f"names). Duplicates within a set, which would count the same evidence twice: {counts['published']} in P, "
            f"{counts['unpublished']} in U ({action}).</p>")
    if null:
        parts += [
            "<h2>Does the test accuse innocent models?</h2>",
            f"<p>The test was run on {null['trials']} random splits of the unpublished images alone (both halves "
            f"are non-members). It said 'trained on' in {null['fpr']:.1%} of them at α = {null['alpha']:g} "
            f"(a calibrated test: about {null['alpha']:.0%}; mean p = {null['mean_p']:.2f}, ideally 0.5).</p>",
        ]
    parts.append("<h2>How the evidence grows with the number of images</h2>")
    parts.append(_img(cdi_out.get("pvalue_curve"), "p-value against sample count"))
    parts.append("<p class='small'>Mean p-value (and band) when the test uses only n images per side. Below the "
                 "dashed α lines the evidence is significant.</p>")
    parts.append("<h2>Scores of P and U</h2>")
    parts.append(_img(cdi_out.get("score_histogram"), "score histogram"))
    parts.append("<p class='small'>Each image gets a membership score from a model that never saw that image. "
                 "If the model was trained on P, P's scores sit to the right of U's.</p>")
    mia = report.get("mia_context") or {}
    if mia:
        parts += ["<h2>Single-image attacks (context)</h2>",
                  "<p class='small'>How well each per-image signal alone separates P from U. Single-image "
                  "attacks are weak on their own; dataset inference aggregates many images.</p>",
                  "<table><tr><th>attack</th><th>AUC</th><th>TPR @ 1% FPR</th><th>TPR @ 0.1% FPR</th></tr>"]
        for name, m in mia.items():
            tpr = m.get("tpr_at_fpr", {})
            parts.append(f"<tr><td>{html.escape(name)}</td><td>{_fmt(m.get('auc'))}</td>"
                         f"<td>{_fmt(_tpr(tpr, 0.01))}</td><td>{_fmt(_tpr(tpr, 0.001))}</td></tr>")
        parts.append("</table>")
        parts.append(_img(mia_out.get("roc_loglog") or mia_out.get("roc"), "ROC curves"))
    drc = report.get("drc")
    if drc:
        parts += ["<h2>Restoration evidence (DRC)</h2>",
                  "<p class='small'>Each row: original | degraded (masked) | restored by the model | difference. "
                  "A model restores images it was trained on more faithfully.</p>"]
        for side in ("published", "unpublished"):
            d = drc.get(side) or {}
            parts.append(f"<h3>{side} images (mean {html.escape(drc['metric'])}: {_fmt(d.get('mean_' + drc['metric']))})</h3>")
            for p in d.get("evidence", [])[:8]:
                parts.append(_img(p, f"DRC evidence {side}"))
    parts += ["<h2>Details</h2>",
              f"<p class='small'>Model digest {html.escape(str(report['model']['digest']))}; seed {report['seed']}; "
              f"jaxmia {html.escape(report['versions']['jaxmia'])}. Everything here is in report.json, and the "
              "resolved configuration in config.json.</p>",
              "</body></html>"]
    path = Path(path)
    path.write_text("\n".join(p for p in parts if p))
    return path


def _evidence_strength(v: dict) -> list:
    comp = v.get("components")
    if not comp:
        return []
    return [
        "<h2>How strong is the evidence?</h2>",
        f"<p>The p-value combines two calibrated tests. A permutation test (the model's scores compared with "
        f"{comp['permutations']} random relabellings) gave p = {_fmt(comp['p_permutation'])}; it cannot go below "
        f"{_fmt(1 / (1 + comp['permutations']))}. A second test on {comp['tail_pairs_tested']} pairs the scoring model "
        f"never saw, with a bound that holds exactly whatever the data, gave p = {_fmt(comp['p_tail'])}. "
        f"The reported p is the smaller of the two after a fixed correction (÷{comp['weight_permutation']:g} and "
        f"÷{comp['weight_tail']:.2g}), so an innocent model still gets p ≤ α at most α of the time.</p>",
    ]


def _shift_section(shift) -> list:
    """'Could something other than training explain this?': blind test, files, processing sensitivity."""
    if not shift:
        return []
    b = shift["blind"]
    bv = b["verdict"]
    out = ["<h2>Could something other than training explain this?</h2>",
           "<p>If the published and unpublished images were made differently (resized, compressed, blurred, "
           "brighter), a model can tell them apart without having been trained on either. jaxmia checks this "
           "without the model: the same test runs on simple image statistics (brightness, contrast, sharpness, "
           "frequency content, JPEG traces" + (", and the file formats and sizes" if b.get("uses_file_facts") else "")
           + f").</p><p><b>Without the model: p = {html.escape(b['p_text'])}</b> — "
           + ("P and U <b>differ</b> without the model." if bv["reject"] else
              "P and U cannot be told apart without the model (good).") + "</p>"]
    if b.get("separating"):
        out.append("<table><tr><th>image statistic</th><th>P mean</th><th>U mean</th><th>AUC (0.5 = no "
                   "difference)</th><th>p (this statistic alone)</th></tr>")
        for r in b["separating"]:
            out.append(f"<tr><td>{html.escape(r['description'])}</td><td>{_fmt(r['mean_published'])}</td>"
                       f"<td>{_fmt(r['mean_unpublished'])}</td><td>{_fmt(r['auc'])}</td><td>{_fmt(r['p_value'])}</td></tr>")
        out.append("</table>")
    close = shift.get("closest_processing")
    if bv["reject"] and close:
        out.append(f"<p>The difference looks most like <b>{html.escape(close[0]['processing'])}</b> "
                   "(of the processings tried on half of U, the one whose effect on the image statistics is closest).</p>")
    files = shift.get("files") or {}
    if files.get("available"):
        ps, us = files["published"], files["unpublished"]
        out.append("<table><tr><th>files</th><th>P</th><th>U</th></tr>"
                   f"<tr><td>formats</td><td>{_shares(ps['formats'])}</td><td>{_shares(us['formats'])}</td></tr>"
                   f"<tr><td>sizes</td><td>{_shares(ps['sizes'])}</td><td>{_shares(us['sizes'])}</td></tr>"
                   f"<tr><td>JPEG quality (median)</td><td>{_fmt(ps['jpeg_quality_median'])}</td>"
                   f"<td>{_fmt(us['jpeg_quality_median'])}</td></tr></table>")
        for m in files["mismatches"]:
            out.append(f"<p class='verdict inconclusive'>The files differ: {html.escape(m['words'])}.</p>")
    elif files:
        out.append(f"<p class='small'>{html.escape(files.get('note', ''))}</p>")
    sens = shift.get("sensitivity") or {}
    if sens.get("rows"):
        out += [f"<h3>Would mild processing alone make this model look trained?</h3>"
                f"<p class='small'>Half of the unpublished images ({sens['n']}) were processed and compared with the "
                "other half by the same test. Both halves are non-members, so 'yes' means that processing alone "
                "would produce a 'trained' verdict. 'Blind test notices' says whether the check without the model "
                "catches it.</p>",
                "<table><tr><th>processing</th><th>model test p</th><th>says 'trained'?</th>"
                "<th>from n per side (curve)</th><th>blind test notices?</th></tr>"]
        for r in sens["rows"]:
            out.append(f"<tr><td>{html.escape(r['words'])}</td><td>{html.escape(r['p_text'])}</td>"
                       f"<td>{'yes' if r['reject'] else 'no'}</td><td>{_fmt(r['samples_needed'])}</td>"
                       f"<td>{'yes' if r['blind_reject'] else 'no'} (p = {_fmt(r['blind_p_value'])})</td></tr>")
        out.append("</table>")
    elif sens.get("skipped"):
        out.append(f"<p class='small'>Processing sensitivity skipped: {html.escape(sens['skipped'])}</p>")
    return out


def _shares(shares: dict) -> str:
    return html.escape(", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:3]))


def _tpr(tpr, x):
    if isinstance(tpr, dict):
        for k, val in tpr.items():
            try:
                if abs(float(k) - x) < 1e-12:
                    return val.get("tpr") if isinstance(val, dict) else val
            except ValueError:
                continue
    return None
