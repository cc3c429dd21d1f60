"""How a backend ranks itself for ``backend="auto"``: priority keys, and the situation they are matched against.

A backend declares ``Capabilities.priority``, a mapping from keys to ranks (lower is tried first). A key names a
situation::

    <hardware>[+<feature>...][/<trait>...]

- hardware: ``"nvidia"`` (a CUDA GPU is present), ``"apple"`` (Apple silicon), ``"cpu"`` (anything else), or
  ``"*"`` (any);
- feature: an ISA feature the CPU must have (:data:`FEATURES`: ``avx512f``, ``avx512_bf16``, ``avx512_vnni``,
  ``amx_bf16``, ``amx_int8``, ``neon``, ...), as :mod:`motorpool.plugin.hardware` reads them;
- trait: what the model is and what is asked of it (:data:`TRAITS`): its kind, read from the operators of one
  eager run (``attention``, ``convolution``, ``recurrent``, ``dense``), ``causal`` (masked self-attention, as in
  decoders), ``dynamic`` (a dynamic dimension besides the batch), and the precision asked for (``fp32``,
  ``fp16``, ``bf16``, ``int8``).

``"cpu+avx512f/attention": 10`` reads "on a CPU with AVX-512, for an attention model: rank 10". Of the keys that
match, the most specific decides: the most traits, then the most features, then a named hardware over ``"*"``;
among equals, the lower rank. A backend that matches no key ranks :data:`UNRANKED`.

The key ``"intel-cpu"`` (a CPU made by Intel) is kept for plugins written before features could be named; it
counts as one feature. Rank on what the hardware can do, not on who made it.

Ranks closer than :data:`CLEAR_CUT` are not a clear call: ``auto`` then times the top two briefly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .hardware import FEATURE_NAMES, HARDWARE_CLASSES, detect

#: the hardware a key may name
HARDWARE = HARDWARE_CLASSES
#: the ISA features a key may name (the names motorpool.plugin.hardware reads from the CPU)
FEATURES = FEATURE_NAMES
#: the model kinds, most telling first: a model with attention and convolutions is an attention model
KINDS = ("recurrent", "attention", "convolution", "dense")
#: what a key may ask of the model and the request
TRAITS = frozenset(KINDS) | {"causal", "dynamic", "fp32", "fp16", "bf16", "int8"}
#: ranks at least this far apart are a clear call; closer ones are timed by ``auto``
CLEAR_CUT = 10
#: the rank of a backend none of whose keys match
UNRANKED = 100
_LEGACY = {"intel-cpu": ("cpu", "GenuineIntel")}


@dataclass(frozen=True)
class Situation:
    """What a priority key is matched against: the hardware here, its CPU's features, the model's traits."""

    hardware: str
    features: frozenset[str] = frozenset()
    traits: frozenset[str] = frozenset()
    vendor: str = ""

    @classmethod
    def here(cls, traits: Iterable[str] = ()) -> "Situation":
        """This machine's situation, for a model with ``traits``."""
        hw = detect()
        return cls(hw.hardware_class, frozenset(hw.cpu.features), frozenset(traits), hw.cpu.vendor)

    def to_dict(self) -> dict:
        return {"hardware": self.hardware, "features": sorted(self.features), "traits": sorted(self.traits)}


@dataclass(frozen=True)
class Key:
    """One parsed priority key."""

    text: str
    hardware: str  # one of HARDWARE, or "*"
    features: frozenset[str] = field(default_factory=frozenset)
    traits: frozenset[str] = field(default_factory=frozenset)
    vendor: str = ""

    @classmethod
    def parse(cls, text: str) -> "Key":
        """Parse ``text``; a ValueError names what is wrong and what a key may say."""
        if not isinstance(text, str) or not text:
            raise ValueError(f"priority key: expected a non-empty string, got {text!r}")
        head, *traits = text.split("/")
        hw, *features = head.split("+")
        vendor = ""
        if hw in _LEGACY:
            hw, vendor = _LEGACY[hw]
        if hw not in HARDWARE and hw != "*":
            raise ValueError(f"priority key {text!r}: hardware {hw!r} is not one of {', '.join(HARDWARE)} or '*'")
        unknown = [f for f in features if f not in FEATURES] + [t for t in traits if t not in TRAITS]
        if unknown:
            raise ValueError(f"priority key {text!r}: unknown {', '.join(map(repr, unknown))}; features are "
                             f"{', '.join(sorted(FEATURES))}; traits are {', '.join(sorted(TRAITS))}")
        return cls(text, hw, frozenset(features), frozenset(traits), vendor)

    def matches(self, s: Situation) -> bool:
        return ((self.hardware == "*" or self.hardware == s.hardware) and self.features <= s.features
                and self.traits <= s.traits and (not self.vendor or self.vendor == s.vendor))

    @property
    def specificity(self) -> tuple[int, int, int]:
        return len(self.traits), len(self.features) + bool(self.vendor), self.hardware != "*"


def check_priority(priority: Mapping[str, int]) -> None:
    """Raise ValueError for a key that does not parse or a rank that is not an integer."""
    for text, value in priority.items():
        Key.parse(text)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"priority {text!r}: expected an integer rank, got {value!r}")


def decide(priority: Mapping[str, int], situation: Situation | str) -> tuple[int, str]:
    """The rank ``priority`` gives ``situation`` and the key that decided it (``""``: none matched).

    ``situation`` may be a bare hardware name (``"cpu"``): a situation with no features or traits.
    """
    if isinstance(situation, str):
        hw, vendor = _LEGACY.get(situation, (situation, ""))
        situation = Situation(hw, vendor=vendor)
    best: tuple[tuple[int, int, int], int, str] | None = None
    for text, value in priority.items():
        key = Key.parse(text)
        if not key.matches(situation):
            continue
        candidate = (key.specificity, -value, text)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is None:
        return UNRANKED, ""
    return -best[1], best[2]
