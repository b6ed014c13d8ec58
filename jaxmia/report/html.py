"""``report.html``: the audit for a non-specialist, in one self-contained file.

Rendered from a typed :class:`~jaxmia.report.sections.AuditReport`. Every image is embedded as a
base64 data URI, so the page can be mailed or archived alone. Evidence images are PNGs already
upscaled with nearest neighbour (:mod:`jaxmia.drc.evidence`) and shown at their own pixel size
with ``image-rendering: pixelated``, so no browser smoothing blurs them.
"""

from __future__ import annotations

import base64
import html
import struct
from pathlib import Path

from jaxmia.report.sections import SIDES, AuditReport, DrcEvidence, DrcImage


def _img(path, alt: str, *, native: bool = False) -> str:
    """An embedded PNG; ``native``: shown at its own pixel size (width/height attributes), never shrunk."""
    if not path or not Path(path).is_file():
        return ""
    raw = Path(path).read_bytes()
    data = base64.b64encode(raw).decode()
    size = ""
    if native:
        width, height = _png_size(raw, path)
        size = f' class="native" width="{width}" height="{height}"'
    return f'<img alt="{html.escape(alt)}"{size} src="data:image/png;base64,{data}">'


def _png_size(raw: bytes, path) -> tuple:
    if raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    return struct.unpack(">II", raw[16:24])


def _fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return html.escape(str(x))


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1120px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.verdict{font-size:1.25em;padding:.8em 1em;border-radius:6px}
.guilty{background:#fde2e1;border:1px solid #e06c6c} .innocent{background:#e3f4e1;border:1px solid #6cae6c}
.inconclusive{background:#fff4d6;border:1px solid #d9a627} .headline{font-weight:bold;display:block}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:.4em 0;image-rendering:pixelated} .small{color:#666;font-size:.9em}
img.native{max-width:none;image-rendering:pixelated;image-rendering:crisp-edges}
.drc-grid{display:grid;grid-template-columns:repeat(2,max-content);gap:.6em 1.2em;overflow-x:auto;margin:.6em 0}
.drc-grid h3{margin:.2em 0} .drc-panel{margin:0;padding:.4em;border:1px solid #ddd;border-radius:4px;width:min-content}
.drc-panel figcaption{font-size:.9em} .drc-panel .score{font-weight:bold}
.drc-cols{display:flex;font-size:.8em;color:#555;padding-left:2px} .drc-cols span{text-align:center}

"""


def write_html_report(report: AuditReport, outputs: dict, path) -> Path:
    """Renders an audit ``report`` to ``path``; ``outputs``: the CDI/MIA plot paths (write_report's)."""
    v = report.cdi.verdict
    conclusion = report.conclusion
    css = {"trained": "guilty", "no_evidence": "innocent", "inconclusive": "inconclusive"}[conclusion.status]
    cdi_out, mia_out = outputs.get("cdi", {}), outputs.get("mia", {})
    null = report.cdi.null_calibration
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>jaxmia audit</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Was this model trained on the published images?</h1>",
        f"<p class='verdict {css}'><span class='headline'>{html.escape(conclusion.headline)}</span>"
        f"{html.escape(conclusion.summary)}</p>",
        *(f"<p class='small'>Caveat: {html.escape(c)}.</p>" for c in conclusion.caveats),
        "<h2>The test</h2>",
        "<table>",
        f"<tr><th>p-value</th><td>{html.escape(conclusion.p_text)}</td></tr>",
        f"<tr><th>how it was obtained</th><td>{html.escape(str(v.get('method')))}"
        f"{', ' + str(v.get('alternative')) if v.get('alternative') else ''}</td></tr>",
        f"<tr><th>statistic</th><td>{_fmt(v.get('statistic'))}</td></tr>",
        f"<tr><th>direction matches membership</th><td>{_fmt(v.get('is_correct_order'))}</td></tr>",
        f"<tr><th>images per side (n)</th><td>{_fmt(v.get('n_p'))}</td></tr>",
        f"<tr><th>decision level α</th><td>{_fmt(v.get('alpha'))}</td></tr>",
        f"<tr><th>samples per side needed for p ≤ α</th><td>{_fmt(report.cdi.samples_needed)}</td></tr>",
        "</table>",
        "<p class='small'>The p-value is the probability of seeing a difference at least this large between "
        "the published set P and the unpublished set U if the model had never been trained on P and P and U "
        "were made the same way. jaxmia's default test is calibrated by construction, so p ≤ 0.01 happens for "
        "an innocent model at most 1% of the time; the checks below test the 'made the same way' part.</p>",
    ]
    parts += _evidence_strength(v)
    parts += _shift_section(report.shift)
    dup = report.run.duplicates
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
    mia = report.mia.context()
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
    if report.drc is not None:
        parts += _drc_section(report.drc, conclusion.p_text, v.get("alpha"))
    parts += ["<h2>Details</h2>",
              f"<p class='small'>Model digest {html.escape(str(report.run.model.digest))}; seed {report.run.seed}; "
              f"jaxmia {html.escape(report.versions['jaxmia'])}. Everything here is in report.json, and the "
              "resolved configuration in config.json.</p>",
              "</body></html>"]
    path = Path(path)
    path.write_text("\n".join(p for p in parts if p))
    return path


def _drc_section(drc: DrcEvidence, p_text: str, alpha) -> list:
    """P's and U's most member-like and most non-member-like restorations side by side, with scores."""
    metric = drc.metric.upper() if drc.metric in ("mse", "psnr", "ssim") else drc.metric
    better = "higher" if drc.higher_is_member else "lower"
    out = ["<h2 id='drc'>Restoration evidence (DRC)</h2>",
           "<p>Part of each image is hidden (masked) and the model paints it back in (restored). A model restores "
           "images it was trained on more faithfully. Left: published images (P, the suspected members); right: "
           "unpublished images (U, known non-members). In each, the most member-like and the most non-member-like "
           f"of the {len(drc.published.images)} and {len(drc.unpublished.images)} images restored, ranked within "
           f"their own set. DRC score: {html.escape(metric)} between original and restoration, mean over the "
           f"masks ({better} = more member-like).</p>",
           (f"<p class='small drc-restoration'>Restoration: {html.escape(drc.restoration)}.</p>"
            if drc.restoration else ""),
           f"<p class='small'>These pictures illustrate; they do not decide. The verdict rests on the test above "
           f"(p = {html.escape(p_text)}, α = {_fmt(alpha)}), computed over every image of P and U. Mean DRC "
           f"score of the restored images: P {_fmt(drc.published.mean)}, U {_fmt(drc.unpublished.mean)}.</p>",
           "<div class='drc-grid'>",
           "<h3>published (P): suspected members</h3><h3>unpublished (U): non-members</h3>"]
    for pick in ("most_member_like", "most_nonmember_like"):
        for side in SIDES:
            out.append(_drc_panel(side, getattr(drc.side(side), pick), metric))
    out.append("</div>")
    out.append("<p class='small drc-cols'>Each panel: one row per mask; columns: original | masked (hidden part "
               "grey) | restored by the model | error (brighter = larger difference).</p>")
    return out


def _drc_panel(side: str, image: DrcImage | None, metric: str) -> str:
    short = "P" if side == "published" else "U"
    if image is None:
        return f"<figure class='drc-panel' data-side='{side}'><figcaption>no image</figcaption></figure>"
    per_task = ", ".join(f"{html.escape(c.split('_', 2)[-1])} {v:.4g}" for c, v in image.task_scores.items())
    return (f"<figure class='drc-panel' data-side='{side}' data-id='{html.escape(image.id)}' "
            f"data-rank='{image.rank}' data-score='{image.score!r}'>" + _drc_columns(image.path)
            + _img(image.path, f"DRC evidence {short} {image.id}", native=True)
            + f"<figcaption>{short}, most {html.escape(image.rank)}: {html.escape(image.id)}<br>"
            f"<span class='score'>DRC score ({html.escape(metric)}) {image.score:.4g}</span>"
            f" <span class='small'>({per_task})</span></figcaption></figure>")


def _drc_columns(path) -> str:
    """Column titles over an evidence grid, each as wide as its panel (layout of jaxmia.drc.evidence)."""
    from jaxmia.drc.evidence import COLUMNS, PAD

    if not path or not Path(path).is_file():
        return ""
    width, _ = _png_size(Path(path).read_bytes(), path)
    step = (width - PAD) // len(COLUMNS)  # one panel plus its gap
    titles = ("original", "masked", "restored", "error")
    return ("<div class='drc-cols'>" + "".join(f"<span style='width:{step}px'>{t}</span>" for t in titles)
            + "</div>")


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
