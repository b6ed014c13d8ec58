"""Making U like P: compare what the files say (size, format, JPEG quality), and re-save U like P.

A fair audit needs P and U processed the same way. :func:`compare_files` reads the per-image file
facts of both sets (:mod:`jaxmia.data.files`) and lists every difference in plain words; the audit
warns or refuses on them (``audit.file_mismatch``). :func:`target_like` summarises how P's files were
made (most common size, format, mode, median JPEG quality estimated from the quantisation tables), and
:func:`make_like` writes U's images again that way::

    from jaxmia.shift import make_like_folder
    make_like_folder("U/", "U_like_P/", like="P/")   # then audit with -u U_like_P/

Rules: formats and sizes (and modes) differ when their distributions in P and U are more than
``tv`` apart in total variation (default 0.25: a quarter of the images would have to change); JPEG
qualities differ when the medians differ by more than ``quality_tol`` (default 5).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


def _shares(values) -> dict:
    counts = Counter(values)
    return {k: v / len(values) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def _tv(a: dict, b: dict) -> float:
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


def summarise_files(files) -> dict:
    """Shares of formats, sizes (``WxH``) and modes, and the JPEG qualities of one set's files."""
    qualities = [f["jpeg_quality"] for f in files if f.get("jpeg_quality") is not None]
    return {
        "images": len(files),
        "formats": _shares([f["format"] for f in files]),
        "sizes": _shares([f"{f['width']}x{f['height']}" for f in files]),
        "modes": _shares([f["mode"] for f in files]),
        "jpeg_quality_median": float(np.median(qualities)) if qualities else None,
        "jpeg_quality_range": [int(min(qualities)), int(max(qualities))] if qualities else None,
        "bytes_per_pixel_median": float(np.median([f["bytes"] / max(1, f["width"] * f["height"]) for f in files])),
    }


def _top(shares: dict) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:3])


def compare_files(p_files, u_files, *, tv: float = 0.25, quality_tol: float = 5.0) -> dict:
    """Differences between P's and U's files: ``{"available", "published", "unpublished", "mismatches"}``.

    Each mismatch is ``{"fact", "published", "unpublished", "words"}``. Sets not read from files
    (arrays, demo sets) give ``available: False`` and no mismatch.
    """
    if p_files is None or u_files is None:
        return {"available": False, "mismatches": [],
                "note": "file facts are only known for image folders; "
                        f"{'P' if p_files is None else 'U'} was not read from image files"}
    ps, us = summarise_files(p_files), summarise_files(u_files)
    mismatches = []
    for fact, key in (("format", "formats"), ("size", "sizes"), ("mode", "modes")):
        if _tv(ps[key], us[key]) > tv:
            mismatches.append({"fact": fact, "published": ps[key], "unpublished": us[key],
                               "words": f"P's files are {_top(ps[key])}; U's are {_top(us[key])}"})
    qp, qu = ps["jpeg_quality_median"], us["jpeg_quality_median"]
    if qp is not None and qu is not None and abs(qp - qu) > quality_tol:
        mismatches.append({"fact": "jpeg_quality", "published": qp, "unpublished": qu,
                           "words": f"P's JPEGs have quality about {qp:g}, U's about {qu:g}"})
    return {"available": True, "published": ps, "unpublished": us, "mismatches": mismatches}


def target_like(files) -> dict:
    """How P's files were made: the most common format, size and mode, and the median JPEG quality."""
    s = summarise_files(files)
    w, h = (int(v) for v in next(iter(s["sizes"])).split("x"))
    fmt = next(iter(s["formats"]))
    quality = s["jpeg_quality_median"]
    return {"format": fmt, "width": w, "height": h, "mode": next(iter(s["modes"])),
            "jpeg_quality": int(round(quality)) if fmt == "JPEG" and quality is not None else None}


def _resize_crop(img: Image.Image, w: int, h: int) -> Image.Image:
    scale = max(h / img.height, w / img.width)
    img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def make_like(paths, out_dir, target: dict, *, root=None) -> list[Path]:
    """Re-saves the image files ``paths`` into ``out_dir`` the way ``target`` (:func:`target_like`) says.

    Each image is converted to the target mode, resized (bicubic, shorter side first, then a centre
    crop) to the target size, and saved in the target format (JPEG at the target quality). File names
    keep their relative path under ``root`` (default: each file's folder) with the target's suffix.
    """
    out = Path(out_dir)
    suffix = FORMAT_SUFFIX.get(target["format"])
    if suffix is None:
        raise ValueError(f"make_like: cannot write format {target['format']!r}; known: {', '.join(FORMAT_SUFFIX)}")
    written = []
    for path in map(Path, paths):
        rel = path.relative_to(root) if root is not None else Path(path.name)
        dest = (out / rel).with_suffix(suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as img:
            img = img.convert(target["mode"])
            if (img.width, img.height) != (target["width"], target["height"]):
                img = _resize_crop(img, target["width"], target["height"])
            kwargs = {"quality": int(target["jpeg_quality"])} if target["format"] == "JPEG" and target.get("jpeg_quality") else {}
            img.save(dest, format=target["format"], **kwargs)
        written.append(dest)
    return written


def make_like_folder(src, out_dir, *, like) -> dict:
    """Re-saves every image of folder ``src`` like the files of folder ``like`` (P); returns the target."""
    from jaxmia.data.folder import IMAGE_SUFFIXES, read_folder

    _, _, facts = read_folder(like, None, resize="resize", with_facts=True)
    target = target_like(facts)
    src = Path(src)
    paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{src}: no images found (looked for {', '.join(IMAGE_SUFFIXES)})")
    written = make_like(paths, out_dir, target, root=src)
    return {"target": target, "written": len(written), "out": str(out_dir)}
