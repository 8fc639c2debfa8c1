"""How hard the phantom set is: finding contrast, noise, exposure spread, patient rotation."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from cxrkit.data.errors import CxrError

# (easy, hard) end points of the scalar preset, chosen so level 0.5 is exactly the default Difficulty():
# contrast and noise are interpolated geometrically (their midpoint is the geometric mean), the rest linearly.
_EASY = dict(contrast=1.8, noise=0.015, exposure=0.1, rotation=1.0)
_HARD = dict(contrast=1 / 1.8, noise=0.035**2 / 0.015, exposure=0.9, rotation=7.0)


class DifficultyError(CxrError):
    """A difficulty setting is out of range."""


@dataclass(frozen=True)
class Difficulty:
    """Knobs that make the phantom findings easier or harder to see.

    Attributes:
        contrast: multiplier on every finding's strength (density, enlargement, lucency); 1 = default,
            < 1 subtler signs, > 1 obvious ones.
        noise: standard deviation of the quantum-like pixel noise, as a fraction of the grey range.
        exposure: spread of per-film exposure (gain, offset, gamma); 0 = every film windowed alike.
        rotation: largest patient rotation in degrees (drawn uniformly in +-rotation).
    """

    contrast: float = 1.0
    noise: float = 0.035
    exposure: float = 0.5
    rotation: float = 4.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise DifficultyError(f"Difficulty.{name}={value!r} must be a finite number >= 0")
        if self.contrast <= 0:
            raise DifficultyError("Difficulty.contrast must be > 0 (0 would draw no findings at all)")
        if self.noise > 0.5 or self.exposure > 3 or self.rotation > 45:
            raise DifficultyError(f"{self} is outside the supported range (noise <= 0.5, exposure <= 3, "
                                  "rotation <= 45 degrees)")

    @classmethod
    def level(cls, level: float) -> "Difficulty":
        """The preset for a scalar ``level``: 0 easy, 0.5 the default, 1 hard (geometric in contrast/noise)."""
        if not isinstance(level, (int, float)) or not 0 <= level <= 1:
            raise DifficultyError(f"difficulty level {level!r} must be a number in [0, 1] (0 easy, 1 hard)")
        t = float(level)
        geo = {k: _EASY[k] * (_HARD[k] / _EASY[k]) ** t for k in ("contrast", "noise")}
        lin = {k: _EASY[k] + (_HARD[k] - _EASY[k]) * t for k in ("exposure", "rotation")}
        return cls(**{k: round(v, 6) for k, v in {**geo, **lin}.items()})

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_LEVEL = 0.5
PRESETS = {"easy": 0.15, "default": DEFAULT_LEVEL, "medium": DEFAULT_LEVEL, "hard": 0.85}


def resolve_difficulty(difficulty: "float | str | Difficulty | dict | None") -> Difficulty:
    """Accept a :class:`Difficulty`, a scalar level in [0, 1] (or its string), a preset name (``easy``,
    ``default``/``medium``, ``hard``), a dict of fields, or None (the default)."""
    if difficulty is None:
        return Difficulty.level(DEFAULT_LEVEL)
    if isinstance(difficulty, Difficulty):
        return difficulty
    if isinstance(difficulty, dict):
        unknown = set(difficulty) - {"contrast", "noise", "exposure", "rotation"}
        if unknown:
            raise DifficultyError(f"unknown difficulty fields {sorted(unknown)}; use contrast, noise, exposure, "
                                  "rotation")
        return Difficulty(**difficulty)
    if isinstance(difficulty, str):
        key = difficulty.strip().lower()
        if key in PRESETS:
            return Difficulty.level(PRESETS[key])
        try:
            return Difficulty.level(float(key))
        except ValueError:
            raise DifficultyError(f"difficulty {difficulty!r}: use a level in [0, 1] or one of "
                                  f"{', '.join(PRESETS)}") from None
    if isinstance(difficulty, (int, float)) and not isinstance(difficulty, bool):
        return Difficulty.level(difficulty)
    raise DifficultyError(f"difficulty must be a level in [0, 1], a preset name ({', '.join(PRESETS)}) or a "
                          f"Difficulty, got {difficulty!r}")
