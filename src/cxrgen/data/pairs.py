"""Choosing the two views of a study that the models see: frontal first, lateral second.

- two or more usable images: the first frontal and the first lateral (by XML order); when one
  projection is missing, the first two images in XML order;
- one usable image: used for both views, and the study is flagged `single_view`;
- none: the study is dropped (the caller counts why).
The choice depends only on the inputs, never on a random draw.
"""

from __future__ import annotations

from dataclasses import dataclass

FRONTAL, LATERAL = "frontal", "lateral"


@dataclass(frozen=True)
class ViewPair:
    first: str
    second: str
    single_view: bool
    n_usable: int


def choose_views(images: list[tuple[int, str, str]]) -> ViewPair | None:
    """images: (position in the report, image_id, projection) of the usable images of one study."""
    ordered = sorted(images)
    if not ordered:
        return None
    if len(ordered) == 1:
        return ViewPair(ordered[0][1], ordered[0][1], single_view=True, n_usable=1)
    frontal = next((i for _, i, p in ordered if p == FRONTAL), None)
    lateral = next((i for _, i, p in ordered if p == LATERAL), None)
    if frontal is not None and lateral is not None:
        return ViewPair(frontal, lateral, single_view=False, n_usable=len(ordered))
    return ViewPair(ordered[0][1], ordered[1][1], single_view=False, n_usable=len(ordered))
