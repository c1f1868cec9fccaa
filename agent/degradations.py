"""The degradation vocabulary shared by synthesis, perception, planning and tools.

Every part of Restora names degradations with the members of :class:`Degradation`. The
physical order says where in image formation each degradation arises; the planner undoes
them in reverse (scene -> optics -> sensor -> processing -> compression, undone last to first).
"""

from __future__ import annotations

from enum import StrEnum


class Degradation(StrEnum):
    """A kind of image degradation the agent can perceive and restore."""

    NOISE = "noise"
    MOTION_BLUR = "motion_blur"
    DEFOCUS_BLUR = "defocus_blur"
    JPEG = "jpeg"
    LOW_RESOLUTION = "low_resolution"
    HAZE = "haze"
    RAIN = "rain"
    RAINDROP = "raindrop"
    LOW_LIGHT = "low_light"
    COLOR_CAST = "color_cast"

    def __str__(self) -> str:  # so f-strings and YAML dumps show the plain name
        return self.value


ALL_DEGRADATIONS: tuple[Degradation, ...] = tuple(Degradation)

#: Where each degradation arises in image formation, first to last. Restoration undoes them
#: in the reverse of this order (MAIR's prior): compression first, scene effects last.
PHYSICAL_ORDER: tuple[Degradation, ...] = (
    Degradation.HAZE,  # scene: light scattering in the atmosphere / water
    Degradation.RAIN,  # scene: streaks in front of the camera
    Degradation.RAINDROP,  # lens surface
    Degradation.DEFOCUS_BLUR,  # optics
    Degradation.MOTION_BLUR,  # exposure
    Degradation.LOW_RESOLUTION,  # sampling / resizing
    Degradation.LOW_LIGHT,  # exposure on the sensor
    Degradation.NOISE,  # sensor read-out
    Degradation.COLOR_CAST,  # white balance in processing
    Degradation.JPEG,  # compression
)

#: Human descriptions, used in prompts, reports and the CLI.
DESCRIPTIONS: dict[Degradation, str] = {
    Degradation.NOISE: "sensor noise (Gaussian or Poisson)",
    Degradation.MOTION_BLUR: "camera or object motion blur",
    Degradation.DEFOCUS_BLUR: "out-of-focus (defocus) blur",
    Degradation.JPEG: "JPEG compression artifacts (blocking, ringing)",
    Degradation.LOW_RESOLUTION: "low effective resolution (upsampled from fewer pixels)",
    Degradation.HAZE: "haze or fog (atmospheric scattering)",
    Degradation.RAIN: "rain streaks",
    Degradation.RAINDROP: "raindrops on the lens",
    Degradation.LOW_LIGHT: "underexposure / low light",
    Degradation.COLOR_CAST: "colour cast (wrong white balance, underwater tint)",
}


def parse_degradation(name: str) -> Degradation:
    """Return the :class:`Degradation` called ``name`` (case and ``-``/space insensitive).

    Raises:
        ValueError: if the name is unknown; the message lists the known names.
    """
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    aliases = {"blur": "defocus_blur", "dark": "low_light", "lowlight": "low_light", "sr": "low_resolution"}
    key = aliases.get(key, key)
    try:
        return Degradation(key)
    except ValueError:
        known = ", ".join(d.value for d in ALL_DEGRADATIONS)
        raise ValueError(f"unknown degradation {name!r}; known: {known}") from None


def restoration_order(degradations: list[Degradation] | set[Degradation]) -> list[Degradation]:
    """Sort degradations into the order they should be undone (reverse physical order)."""
    rank = {d: i for i, d in enumerate(PHYSICAL_ORDER)}
    return sorted(set(degradations), key=lambda d: -rank[d])


_BLURS = frozenset({Degradation.MOTION_BLUR, Degradation.DEFOCUS_BLUR, Degradation.LOW_RESOLUTION})

#: What removing a degradation can legitimately reveal or amplify: noise and JPEG blocks hide
#: blur; noise also lowers the dark channel (its minima), so denoising raises that haze cue and shows
#: haze the noise was hiding, and it drowns thin rain streaks, which show once it is gone; smoothing away
#: rain looks like blur; brightening or dehazing lifts noise and blocks out of the shadows; darkness
#: compresses contrast, so brightening also makes blur and rain streaks measurable; haze flattens contrast,
#: so the blur left under it shows once it is gone; the softness of a lower resolution hides the shape of
#: a blur that arose before it (a streak or a disc), which shows once the detail is restored, and a motion
#: streak or a defocus disc hides the softness of a lower resolution, and a disc the shape of a streak,
#: which show once the blur over them is gone.
#: (Brightening also lifts the dark channel, a haze cue, but a haze step after brightening was
#: seen to wreck an image, so that rise still counts against the step.)
#: The verifier does not hold such a rise against the step, and the
#: planner may take a revealed type up again.
REVEALS: dict[Degradation, frozenset[Degradation]] = {
    Degradation.NOISE: _BLURS | {Degradation.HAZE, Degradation.RAIN},
    Degradation.JPEG: _BLURS,
    Degradation.RAIN: _BLURS,
    Degradation.RAINDROP: _BLURS,
    Degradation.LOW_LIGHT: frozenset({Degradation.NOISE, Degradation.JPEG, Degradation.COLOR_CAST, Degradation.RAIN})
    | _BLURS,
    Degradation.HAZE: frozenset({Degradation.NOISE, Degradation.JPEG, Degradation.COLOR_CAST, Degradation.LOW_LIGHT})
    | _BLURS,
    Degradation.COLOR_CAST: frozenset(),
    Degradation.MOTION_BLUR: frozenset({Degradation.LOW_RESOLUTION}),
    Degradation.DEFOCUS_BLUR: frozenset({Degradation.MOTION_BLUR, Degradation.LOW_RESOLUTION}),
    Degradation.LOW_RESOLUTION: frozenset({Degradation.MOTION_BLUR, Degradation.DEFOCUS_BLUR}),
}

#: What removing a degradation can hide without removing it: a JPEG step smooths the noise that was
#: compressed with the blocks into soft blotches that no longer read as noise, though they are still
#: there (MiO100's noise + JPEG images, seeds 2025-2026: the learned denoiser after the JPEG step gains
#: 0.2-2.5 dB). A type seen present before such a step and gone after it stays to be restored; its step
#: is judged against what was seen before the hiding step (``agent.verify.verify_step``'s ``target_before``).
HIDES: dict[Degradation, frozenset[Degradation]] = {Degradation.JPEG: frozenset({Degradation.NOISE})}
