"""The augmentation spec grammar: ``parse_spec('shift=2,flip,rotate=10')`` -> ``Compose``, the
token table built from the ops' ``tokens``, and ``SPEC_HELP`` (the grammar, as ``--help`` shows
it). ``Compose.describe()`` writes a spec back: ``parse_spec(c.describe()) == c``.
"""
from __future__ import annotations

import dataclasses

from .base import Augmentation, Compose
from .ops import BrightnessContrast, Clip, Cutout, RandomAffine, RandomCrop, RandomFlip, RandomShift, StrokeWidth

SPEC_HELP = """\
augmentation spec: comma-separated tokens NAME or NAME=VALUE, applied left to right
  shift=P          integer shift by U{-P..P} px on each axis, zero fill
  crop=P[:MODE]    pad by P px (MODE: constant (default), edge, reflect), crop a random H x W
  flip[=PROB]      horizontal mirror with probability PROB (default 0.5)
  rotate=DEG       rotate by U[-DEG, DEG] degrees       } adjacent rotate/scale/translate
  scale=F          zoom by U[1-F, 1+F]                   } tokens make one bilinear
  translate=P      sub-pixel shift by U[-P, P] px        } resampling (RandomAffine)
  cutout=S         zero an S x S square at a random centre (it may stick out of the image)
  brightness=B     add U[-B, B]                          } adjacent: one op
  contrast=C       scale about the image mean by U[1-C, 1+C]
  stroke=T[:S]     thicken (2x2 max) with probability T, thin (2x2 min) with S (default 0)
  clip[=LO:HI]     clip values to [LO, HI] (default 0:1)
  none             no augmentation (also the empty spec)
example: shift=2,flip,rotate=10,scale=0.1,cutout=8,crop=4,brightness=0.2,contrast=0.2"""

OPS = (RandomShift, RandomCrop, RandomFlip, RandomAffine, Cutout, BrightnessContrast, StrokeWidth, Clip)
# token -> (op class, the fields its VALUE fills, split on ':'; whether VALUE may be left out)
TOKENS: dict[str, tuple[type, tuple[str, ...], bool]] = {
    name: (cls, fields, optional) for cls in OPS for name, (fields, optional) in cls.tokens.items()}
_SHARED = {cls for cls, _, _ in TOKENS.values() if sum(c is cls for c, _, _ in TOKENS.values()) > 1}
_VALID = f"valid tokens: {', '.join(TOKENS)}, none (grammar: dpnn.augment.SPEC_HELP)"


def _convert(text: str, kind: str):
    """A value of the field type named ``kind`` ('int', 'float' or 'str') from ``text``."""
    if kind == "str":
        return text
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'an integer' if kind == 'int' else 'a number'}") from None


def _token_fields(name: str, value: str | None) -> dict:
    cls, names, optional = TOKENS[name]
    if value is None:
        if not optional:
            raise ValueError(f"{name} needs a value, e.g. {name}=2")
        return {}
    parts = value.split(":")
    if len(parts) > len(names):
        raise ValueError(f"{name} takes at most {len(names)} value(s) separated by ':'")
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    return {f: _convert(p.strip(), kinds[f]) for f, p in zip(names, parts)}


def parse_spec(spec: str) -> Compose:
    """``'shift=2,flip,rotate=10'`` -> Compose of the ops, in order (grammar: ``SPEC_HELP``).

    Adjacent tokens of one op (rotate/scale/translate; brightness/contrast) fill one op,
    unless a token repeats. Unknown names and bad values raise ValueError naming the token.
    """
    groups: list[tuple[type, dict, list[str]]] = []  # (class, fields, tokens)
    for token in (t.strip() for t in spec.split(",")):
        if token in ("", "none"):
            continue
        name, _, value = token.partition("=")
        name = name.strip()
        if name not in TOKENS:
            raise ValueError(f"augmentation spec {spec!r}: unknown token {token!r}; {_VALID}")
        try:
            fields = _token_fields(name, value if "=" in token else None)
        except ValueError as e:
            raise ValueError(f"augmentation spec {spec!r}: token {token!r}: {e}") from None
        cls = TOKENS[name][0]
        if groups and groups[-1][0] is cls and cls in _SHARED and groups[-1][1].keys().isdisjoint(fields):
            groups[-1][1].update(fields)
            groups[-1][2].append(token)
        else:
            groups.append((cls, fields, [token]))
    return Compose([_build(spec, cls, fields, names) for cls, fields, names in groups])


def _build(spec: str, cls: type, fields: dict, tokens: list[str]) -> Augmentation:
    try:
        return cls(**fields)
    except ValueError as e:
        raise ValueError(f"augmentation spec {spec!r}: token {','.join(tokens)!r}: {e}") from None
