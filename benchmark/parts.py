"""Trained parts and their cache keys (design §3).

A method caches an expensive trained part (a DDPM, a classifier) with ``log.cached(part, key, train)``. The
key must hold every hyperparameter that shapes the part, and nothing else: a forgotten field silently
reuses stale weights, a needless one retrains for nothing. So each Config field says once, where it is
declared, which parts it shapes, and the key is derived from those declarations::

    @dataclass
    class MyConfig:
        lr: float = shapes("ddpm", default=1e-3)           # shapes the DDPM
        timesteps: int = shapes("ddpm", "classifier", default=1000)
        guidance_scale: float = 5.0                         # inference only: in no key

    log.cached("ddpm", part_key(config, "ddpm", in_shape=[...]), train)

``tests/test_part_keys.py`` checks every built-in method's declarations by experiment, not by reading them:
a field whose change alters the trained weights must change the key, and a field in the key must alter them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

SHAPES = "lesionbench.shapes"  # field metadata: the parts a field shapes
OMIT_DEFAULT = "lesionbench.omit_default"  # field metadata: left out of the key while at its default


def shapes(*parts: str, default: Any, omit_default: bool = False) -> Any:
    """A Config field that shapes the trained ``parts``. ``omit_default``: the field is left out of the key
    while it holds its default, so that parts cached before the field existed keep their key."""
    if not parts:
        raise ValueError("shapes(): name at least one part")
    return dataclasses.field(default=default, metadata={SHAPES: frozenset(parts), OMIT_DEFAULT: omit_default})


def part_key(config, *parts: str, **extra: Any) -> dict:
    """The cache key of a part: the values of the fields declared to shape any of ``parts`` (tuples as lists),
    and ``extra`` (what else shapes it: the slice shape, the modalities)."""
    key = {}
    for f in dataclasses.fields(config):
        if not f.metadata.get(SHAPES, frozenset()) & set(parts):
            continue
        value = getattr(config, f.name)
        if f.metadata.get(OMIT_DEFAULT) and value == f.default:
            continue
        key[f.name] = list(value) if isinstance(value, tuple) else value
    clash = sorted(set(key) & set(extra))
    if clash:
        raise ValueError(f"part_key: {clash} given both as Config fields and as extra values")
    return {**key, **extra}
