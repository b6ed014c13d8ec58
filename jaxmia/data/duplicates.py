"""The same picture twice: across P and U (refused), within P or within U (flagged, dropped by default).

Images are compared by **content**: the SHA-256 of the decoded pixels as the model will see them
(after conversion to its channels and size), whatever the files are called or where they live. An
image in both P and U makes the test compare a set with itself in part; a duplicate within one side
counts the same evidence twice and inflates n, so the p-value claims more than the data hold.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np

from jaxmia.data.dataset import Dataset

DUPLICATE_POLICIES = ("drop", "refuse", "keep")
_LISTED = 3


def content_digests(dataset: Dataset) -> list[str]:
    """SHA-256 of each image's shape and float32 pixels (little-endian), in the dataset's order."""
    out = []
    for image in dataset.images:
        array = np.ascontiguousarray(image, dtype="<f4")
        digest = hashlib.sha256(str(array.shape).encode())
        digest.update(array.tobytes())
        out.append(digest.hexdigest())
    return out


def _groups(ids: list, digests: list) -> list[list[str]]:
    by_digest = defaultdict(list)
    for i, d in zip(ids, digests):
        by_digest[d].append(i)
    return [group for group in by_digest.values() if len(group) > 1]


def check_published_unpublished(p: Dataset, u: Dataset, *, within: str = "drop") -> tuple[Dataset, Dataset, dict]:
    """Refuses images shared by P and U; handles duplicates within a side by ``within``.

    Args:
      p, u: the published and unpublished sets.
      within: ``drop`` (keep the first image of each group of identical ones, say so), ``refuse``,
        or ``keep`` (leave them; the report still lists them).

    Returns:
      ``(p, u, record)``: the sets (without within-side duplicates under ``drop``) and the record
      written to ``report.json``: the method, the groups found on each side (ids), what was done.

    Raises:
      ValueError: an image of P has the same pixels as one of U (both named, with their sources), or
        a within-side duplicate under ``refuse``.
    """
    if within not in DUPLICATE_POLICIES:
        raise ValueError(f"audit.duplicates={within!r} is not one of {', '.join(DUPLICATE_POLICIES)}")
    p_dig, u_dig = content_digests(p), content_digests(u)
    u_where = defaultdict(list)
    for i, d in zip(u.ids, u_dig):
        u_where[d].append(i)
    shared = [(pid, u_where[d][0]) for pid, d in zip(p.ids, p_dig) if d in u_where]
    if shared:
        pairs = "; ".join(f"P {a!r} = U {b!r}" for a, b in shared[:_LISTED])
        more = f" and {len(shared) - _LISTED} more" if len(shared) > _LISTED else ""
        raise ValueError(f"P ({p.source}) and U ({u.source}) share {len(shared)} image(s) with identical pixels: "
                         f"{pairs}{more}; an image cannot be both published and unpublished, remove it from one side")
    record = {"method": "sha256 of the decoded pixels", "shared_between_p_and_u": 0, "policy_within_side": within,
              "published": {}, "unpublished": {}}
    sides = []
    for name, ds, digests in (("published", p, p_dig), ("unpublished", u, u_dig)):
        groups = _groups(ds.ids, digests)
        extra = sum(len(g) - 1 for g in groups)
        record[name] = {"duplicate_groups": groups, "duplicates": extra}
        if groups and within == "refuse":
            listed = "; ".join(" = ".join(map(repr, g)) for g in groups[:_LISTED])
            raise ValueError(f"{name} set {ds.source}: {extra} duplicate image(s) with identical pixels ({listed}); "
                             f"they would count the same evidence twice (audit.duplicates=drop keeps one of each)")
        if groups and within == "drop":
            dropped = {i for g in groups for i in g[1:]}
            ds = ds.subset([i for i in ds.ids if i not in dropped])
            record[name]["dropped"] = sorted(dropped)
        sides.append(ds)
    return sides[0], sides[1], record


def describe_record(record: dict) -> list[str]:
    """Plain-words lines for progress output and the HTML report."""
    lines = []
    for name in ("published", "unpublished"):
        side = record[name]
        if side["duplicates"]:
            action = {"drop": "dropped (one of each kept)", "keep": "kept (audit.duplicates=keep)"}[
                record["policy_within_side"]]
            lines.append(f"{name} set: {side['duplicates']} duplicate image(s) with identical pixels, {action}")
    return lines
