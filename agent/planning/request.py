r"""Request understanding: a user's words -> a typed :class:`Intent`, offline, with rules.

The parser normalises the text (lower case, British -> American spelling, hyphens, common typos
corrected towards a fixed vocabulary), splits it into clauses ("but", "and", commas, "except",
"without", ...) and reads each clause for degradations named, what should happen to them, numbers,
strength words, the subject of the photo, a fidelity/perception preference and follow-up edits.

Conventions (the paraphrase set ``tests/data/paraphrases.yaml`` is written against these):

- **Fix / protect / skip.** A clause naming a degradation asks to fix it, unless it keeps it
  ("keep / preserve / leave / don't touch / don't remove the grain", "except the blur", "the blur is
  intentional", "I love the grain") -> ``protect`` (never touch, the verifier also guards it), or it
  declines the step ("don't denoise", "no upscaling", "skip the colour correction", "the colours are
  fine", "it's not blurry") -> ``skip`` (not planned). A clause without a verb ("... and the bokeh")
  inherits the polarity of the clause before it. ``only`` lists what to fix (``None``: whatever the
  assessor finds); ``blind`` is set when the user explicitly asks for everything ("remove all
  degradation", "fix everything", or a generic "clean it up" that names nothing).
- **Underwater** names both colour cast and haze (what ``underwater_color`` restores); a protect or
  skip of either removes it silently (no contradiction). A generic blur word ("blur", "deblur",
  "sharpen") means motion blur when the request also mentions motion and nothing defocus-specific.
- **Strength words** in a clause apply to what that clause fixes (or, for a clause naming nothing,
  to the clause before; else to everything, ``strength``): very slightly / a tiny bit = 0.15;
  slightly / a little / a bit / gently / mild = 0.3; somewhat / moderately / some of the / not too
  much / don't overdo it = 0.5; strongly / a lot / heavily / aggressively / most of the = 0.8;
  completely / fully / as much as possible / max = 1.0; "50% strength", "strength 0.7" as given.
  "Keep some / a little grain" while denoising is not a contradiction: it denoises at 0.5.
- **Numbers** (SPIRE-style) go to ``params[degradation]``: noise ``sigma`` on the [0, 1] scale
  (a value >= 1, or "x/255", is read as out of 255 and divided by 255; rounded to 4 decimals);
  blur ``sigma`` / ``radius`` (and motion ``length``) in pixels, motion ``angle`` in degrees;
  jpeg ``quality`` 1-100; low resolution ``scale`` 1-8 ("2x", "x4", "by a factor of 3",
  "double"). A number whose degradation cannot be told ("sigma 0.06" alone), two different
  values for one parameter, or a value out of range -> a clarification question.
- **Follow-ups** (``edits``): less / more (of a named step or, without one, of the last step;
  ``amount`` 0.5, 0.3 for "a bit", 0.8 for "a lot / much"), undo (the last step, or a named one),
  reset ("start over"), skip (with a previous intent), export (optional path and format).
  "Still noisy", "not sharp enough", "more denoising" -> more; "too smooth", "bring back some
  grain", "too bright", "darker", "less sharpening" -> less. With a ``previous`` intent, the new
  intent starts from it: new targets are added ("also remove the haze"), "instead" / "only"
  replaces them, protect/skip remove targets, numbers and strengths override.
- **Clarification** instead of a guess: contradictions ("remove the noise but keep the noise",
  faithful and great-looking), operations Restora does not do (watermarks, crop, colourise,
  darkening an overexposed photo, ...), numbers that are ambiguous or out of range, and text in
  which nothing is recognised. The intent then keeps the previous intent's fields unchanged.

Run ``python -m agent.planning.request --eval tests/data/paraphrases.yaml`` for the accuracy on
the paraphrase set, or ``python -m agent.planning.request "remove the haze but keep the grain"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.degradations import ALL_DEGRADATIONS, Degradation

if TYPE_CHECKING:
    from tools.base import ToolSpec

logger = logging.getLogger(__name__)

Preference = Literal["fidelity", "perception"]
EditAction = Literal["less", "more", "undo", "skip", "reset", "export"]
ClarifyReason = Literal["unknown", "contradiction", "unsupported", "out_of_range", "ambiguous"]
ImageFormat = Literal["png", "jpeg", "tiff", "webp", "bmp"]

#: Requests longer than this are refused with a question (they are typed by people, not pasted files).
MAX_REQUEST_CHARS = 2000

_RANK = {d: i for i, d in enumerate(ALL_DEGRADATIONS)}
_NAMES: dict[Degradation, str] = {
    Degradation.NOISE: "noise",
    Degradation.MOTION_BLUR: "motion blur",
    Degradation.DEFOCUS_BLUR: "blur",
    Degradation.JPEG: "JPEG artifacts",
    Degradation.LOW_RESOLUTION: "low resolution",
    Degradation.HAZE: "haze",
    Degradation.RAIN: "rain",
    Degradation.RAINDROP: "raindrops",
    Degradation.LOW_LIGHT: "darkness",
    Degradation.COLOR_CAST: "colour cast",
}
_CAPABILITIES = ", ".join(_NAMES[d] for d in ALL_DEGRADATIONS)


def _canonical(items: Iterable[Degradation | str]) -> list[Degradation]:
    return sorted({Degradation(d) for d in items}, key=_RANK.__getitem__)


# ------------------------------------------------------------------------------------------ the intent


class Edit(BaseModel):
    """A follow-up that edits the previous plan: less/more of a step, undo, reset, skip, export."""

    model_config = ConfigDict(extra="forbid")

    action: EditAction
    target: Degradation | None = Field(default=None, description="the step named; None: the last step / all")
    amount: float | None = Field(default=None, ge=0.0, le=1.0, description="size of a less/more change")
    path: str | None = Field(default=None, max_length=1024, description="export destination as the user typed it")
    format: ImageFormat | None = Field(default=None, description="export format")

    @model_validator(mode="after")
    def _amount_for_less_more(self) -> Edit:
        if self.action in ("less", "more"):
            if self.amount is None:
                self.amount = 0.5
        elif self.amount is not None:
            raise ValueError(f"amount applies to less/more only, not {self.action}")
        return self


class Clarification(BaseModel):
    """A question for the user instead of a guess."""

    model_config = ConfigDict(extra="forbid")

    reason: ClarifyReason
    question: str = Field(default="", max_length=2000)


class Intent(BaseModel):
    """What a request asks: what to fix, protect or skip, how strongly, and follow-up edits.

    ``only`` and ``protect`` keep their v0 meaning (``only=None``: fix whatever is found;
    ``protect``: never touch). :meth:`to_dict` / :meth:`from_dict` read v0 dicts unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    only: list[Degradation] | None = Field(default=None, description="fix only these; None: whatever is found")
    protect: list[Degradation] = Field(default_factory=list, description="keep these effects; never touch them")
    skip: list[Degradation] = Field(default_factory=list, description="do not plan a step for these")
    blind: bool = Field(default=False, description="the user explicitly asked to remove everything")
    strength: float | None = Field(default=None, ge=0.0, le=1.0, description="strength for every step")
    strengths: dict[Degradation, float] = Field(default_factory=dict, description="strength per degradation")
    params: dict[Degradation, dict[str, float]] = Field(
        default_factory=dict, description="numbers per degradation (sigma, radius, length, angle, quality, scale)"
    )
    semantic: str | None = Field(default=None, max_length=200, description="what the photo shows ('panda')")
    preference: Preference | None = Field(default=None, description="fidelity (faithful) or perception (nice)")
    edits: list[Edit] = Field(default_factory=list, description="follow-up edits of the previous plan")
    clarification: Clarification | None = Field(default=None, description="a question instead of a guess")
    text: str | None = Field(default=None, description="the request as typed")

    @field_validator("only")
    @classmethod
    def _sort_only(cls, value: list[Degradation] | None) -> list[Degradation] | None:
        return None if value is None else _canonical(value)

    @field_validator("protect", "skip")
    @classmethod
    def _sort(cls, value: list[Degradation]) -> list[Degradation]:
        return _canonical(value)

    @field_validator("strengths")
    @classmethod
    def _strength_range(cls, value: dict[Degradation, float]) -> dict[Degradation, float]:
        for d, s in value.items():
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"strength for {d} is {s}; strengths lie in [0, 1]")
        return {d: round(float(s), 4) for d, s in value.items()}

    @property
    def needs_clarification(self) -> bool:
        """True when the request should be answered with :attr:`clarification` before running."""
        return self.clarification is not None

    def allows(self, degradation: Degradation) -> bool:
        """Whether a step may target ``degradation`` under this intent."""
        if degradation in self.protect or degradation in self.skip:
            return False
        return self.only is None or degradation in self.only

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the state and the trace (a superset of the v0 keys)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Intent:
        """Inverse of :meth:`to_dict`; also reads v0 dicts (only, protect, text)."""
        if not data:
            return cls()
        return cls.model_validate(data)

    def comparable(self) -> dict[str, Any]:
        """The fields that define the intent, for exact comparison (no text, no question wording)."""
        data = self.to_dict()
        data.pop("text", None)
        if data["clarification"] is not None:
            data["clarification"] = data["clarification"]["reason"]
        return data


# --------------------------------------------------------------------------------------- vocabulary

N, M, D, J, L = (
    Degradation.NOISE,
    Degradation.MOTION_BLUR,
    Degradation.DEFOCUS_BLUR,
    Degradation.JPEG,
    Degradation.LOW_RESOLUTION,
)
H, R, P, K, C = Degradation.HAZE, Degradation.RAIN, Degradation.RAINDROP, Degradation.LOW_LIGHT, Degradation.COLOR_CAST

Role = Literal["problem", "step", "result", "reverse", "context"]


@dataclass(frozen=True)
class _Word:
    """A vocabulary entry: a pattern naming degradations in a role."""

    pattern: re.Pattern[str]
    degs: tuple[Degradation, ...]
    role: Role
    generic_blur: bool = False  # a blur word that means motion blur when motion is mentioned
    comparative: bool = False  # "sharper", "brighter": asks for more of the fix


def _w(pattern: str, degs: tuple[Degradation, ...], role: Role, **flags: bool) -> _Word:
    return _Word(re.compile(rf"\b(?:{pattern})\b"), degs, role, **flags)


_VOCABULARY: tuple[_Word, ...] = (
    # ---- problems: words for the degradation itself
    _w(
        r"noise|noisy|noisier|noisiness|grain|grains|grainy|grainier|graininess|speckles?|speckled|speckling|"
        r"(?:sensor|iso|film|color|chroma|luminance|luma|digital|gaussian|poisson|shot|impulse) noise|film grain|"
        r"salt_and_pepper(?: noise)?",
        (N,),
        "problem",
    ),
    _w(
        r"mosquito noise|jpe?g(?: compression)?(?: artifacts?| blocks| blocking)?|compression(?: artifacts?| blocks)?|"
        r"compressed|over ?compression|over ?compressed|blocky|blockiness|blocks?|block artifacts|blocking|"
        r"macroblock(?:s|ing)?|ringing|8x8 blocks",
        (J,),
        "problem",
    ),
    _w(
        r"motion(?: blur| blurred| blurry| blurring)?|camera (?:shake|shaking|movement|motion)|hand ?shake|"
        r"shak(?:e|y|ing|en)|shook|jitter(?:y)?|smear(?:ed|ing|y)?|streaky|subject movement",
        (M,),
        "problem",
    ),
    _w(r"blur|blurs|blurry|blurred|blurriness|blurring", (D,), "problem", generic_blur=True),
    _w(
        r"gaussian blur|lens blur|defocus(?:ed)?(?: blur)?|out of focus|unfocused|not in focus|missed focus|"
        r"focus missed|focus|soft|softness|fuzzy|fuzziness|bokeh|unsharp",
        (D,),
        "problem",
    ),
    _w(
        r"low resolution|low res|lowres|resolution|pixell?ated|pixelation|pixely|tiny|too small|thumbnail",
        (L,),
        "problem",
    ),
    _w(
        r"haze|hazy|haziness|fog|foggy|fogged|fogginess|mist|misty|smog|smoggy|murky|murkiness|washed out|smoke|smoky",
        (H,),
        "problem",
    ),
    _w(r"rain|rainy|raining|rainfall|rain streaks?|streaks|rain lines|lines of rain|drizzle|downpour", (R,), "problem"),
    _w(
        r"raindrops?|rain drops?|droplets?|drops|water (?:drops|droplets|spots)|wet lens|"
        r"(?:rain|water|drops|droplets) on (?:the |my )?(?:lens|glass|window|windshield|windscreen|camera)",
        (P,),
        "problem",
    ),
    _w(
        r"dark|darkness|too dark|dim|low light|lowlight|under ?exposed|underexposure|gloomy|poorly lit|badly lit|"
        r"not enough light|shadow detail",
        (K,),
        "problem",
    ),
    _w(
        r"color cast|casts?|tint|tinted|tinge|tinged|hues?|colors?|off colors|discolou?red|discolou?ration|yellowed|"
        r"(?:yellow|blu|green|redd|orang|pink|purpl|gray)ish|warm (?:tones?|tint|look|cast)|warmth|"
        r"too (?:yellow|blue|green|red|orange|magenta|pink|purple|warm|cool|cold|gray)|"
        r"looks? (?:yellow|orange|blue|green|red|magenta|purple|pink)",
        (C,),
        "problem",
    ),
    _w(r"underwater|under water|undersea|scuba", (H, C), "context"),
    # ---- steps: words for the restoration itself
    _w(r"denois(?:e|ed|es|ing|er)|noise (?:reduction|removal)", (N,), "step"),
    _w(r"deshake|stabiliz(?:e|ed|ation|ing)|motion deblur(?:ring)?", (M,), "step"),
    _w(r"deblur(?:s|red|ring)?|sharpen(?:s|ed|ing)?|refocus", (D,), "step", generic_blur=True),
    _w(r"dejpeg|deblock(?:ing|ed)?|artifact removal", (J,), "step"),
    _w(
        r"upscal(?:e|ed|es|ing)|upsampl(?:e|ed|ing)|super ?resol(?:ution|ve|ving)|super ?res|superres|"
        r"enlarg(?:e|ing|ement)|upres|upsiz(?:e|ing)|blow (?:it |this )?up|scale (?:it |this )?up|"
        r"increase the (?:size|resolution)",
        (L,),
        "step",
    ),
    _w(r"dehaz(?:e|ed|ing)|defog(?:ged|ging)?|haze removal", (H,), "step"),
    _w(r"derain(?:ed|ing)?|rain removal", (R,), "step"),
    _w(
        r"brighten(?:ed|ing|s)?|lighten(?:ed|ing)?(?: up)?|(?:lift|open up) the shadows|exposure correction",
        (K,),
        "step",
    ),
    _w(
        r"white balanc(?:e|ing)|color (?:balance|correction|correct|grading|fix)|neutraliz(?:e|ing)|rebalance",
        (C,),
        "step",
    ),
    # ---- results: words for the restored state
    _w(r"sharper|crisper", (D,), "result", generic_blur=True, comparative=True),
    _w(r"sharp|sharpness|crisp|crispness|in focus", (D,), "result", generic_blur=True),
    _w(r"brighter|lighter", (K,), "result", comparative=True),
    _w(r"bright|brightness|exposure|lighting|well lit", (K,), "result"),
    _w(r"smoother", (N,), "result", comparative=True),
    _w(r"smooth|smoothness", (N,), "result"),
    _w(r"bigger|larger|higher resolution", (L,), "result", comparative=True),
    _w(r"high resolution|hi res|high res|more pixels|size", (L,), "result"),
    # ---- reverse: asks for less of a fix
    _w(r"darker|darken(?:ed)?|dimmer", (K,), "reverse"),
)

#: Words typos are corrected towards (distinctive ones only; common English neighbours are excluded).
_FUZZY_TARGETS = (
    "noise noisy denoise denoising grainy graininess speckle speckled blurry blurred blurriness deblur sharpen "
    "sharper sharpness sharpening defocus defocused unfocused motion compression compressed artifacts artifact "
    "blocky blockiness pixelated pixelation resolution upscale upscaling upsample enlarge thumbnail dehaze "
    "dehazing foggy misty smoggy derain raining raindrop raindrops droplets streaks brighten brighter brightness "
    "lighten underexposed underexposure exposure lighting gloomy balance colors color tinted yellowish bluish "
    "greenish reddish underwater preserve remove reduce please slightly little strongly gently aggressively "
    "completely faithful natural perceptual quality sigma export revert stronger increase enhance improve "
    "blurring brightening deblurring upscaled compressing "
    "restore correct shadows without except moderately somewhat"
).split()

#: Real words near a fuzzy target that must never be "corrected".
_COMMON_WORDS = frozenset(
    (
        "there these those where share shore shape shade shame shave snake stake shoot shock spear swear shear "
        "notion lotion potion emotion locus fussy buzzy fizzy shark night right might sight fight tight eight "
        "flight brain drain train trains grail brainy flurry slurry spoke stoke musty musky soggy boggy doggy "
        "hinge colon colons mellow fellow while write whale whine props crops training raising frighten tighten "
        "lightning fighting sighting revolution solution equality expert seduce deduce remote poise noose streams "
        "stigma blush reserve valance wrongly expect expose stream quite quiet photo photos image images picture "
        "pictures thanks thank maybe could would should about around their other which something anything "
        "everything nothing still really actually basically pretty super great looks looking makes making think "
        "phone camera taken before after again first second smaller larger bigger better after gently slight "
        "little lighter moist noisier noises nosey noted notes voice moved mover motive tilted titled "
    ).split()
)

_BRITISH = {
    "grey": "gray",
    "greyish": "grayish",
    "greyscale": "grayscale",
    "artefact": "artifact",
    "artefacts": "artifacts",
    "defocussed": "defocused",
    "neutralise": "neutralize",
    "neutralising": "neutralizing",
    "prioritise": "prioritize",
    "optimise": "optimize",
    "stabilise": "stabilize",
    "stabilised": "stabilized",
    "stabilising": "stabilizing",
    "stabilisation": "stabilization",
    "colourise": "colorize",
    "colorise": "colorize",
    "realise": "realize",
    "favour": "favor",
    "centre": "center",
    "pixellated": "pixelated",
    "windscreen": "windshield",
    "cheque": "check",
}

# ------------------------------------------------------------------------------------ other phrases

_FILL = r"(?:\s*(?:of|is|was|about|around|roughly|approximately|approx|~|at|maybe|like|to|by|with|some))*\s*"
_NUM = r"(\d+(?:\.\d+)?)"

#: (kind, pattern) in the order they are tried; each match is masked before the next pattern.
_NUMBER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(p))
    for kind, p in (
        ("quality", rf"\b{_NUM}\s*percent\s+quality\b"),
        ("quality", rf"\b(?:quality(?: factor| level)?|q){_FILL}{_NUM}(?:\s*percent)?"),
        ("strength", rf"\b(?:strength|intensity|amount|power){_FILL}{_NUM}(\s*percent)?"),
        ("strength", rf"\b(?:at\s+)?{_NUM}(\s*percent)(?:\s+(?:strength|effect|power|intensity))?"),
        ("sigma", rf"\b(?:sigma|std|stddev|standard deviation|level){_FILL}{_NUM}(\s*(?:/\s*255|out of 255|of 255))?"),
        ("angle", rf"\bangle{_FILL}{_NUM}(?:\s*(?:degrees?|deg))?"),
        ("angle", rf"\b{_NUM}\s*(?:degrees?|deg)\b"),
        ("length", rf"\blength{_FILL}{_NUM}(?:\s*(?:px|pixels?))?"),
        ("length", rf"\b{_NUM}\s*(?:px|pixels?)\s+long\b"),
        ("radius", rf"\bradius{_FILL}{_NUM}(?:\s*(?:px|pixels?))?"),
        ("pixels", rf"\b{_NUM}\s*(?:px|pixels?)\b"),
        ("scale", rf"\b{_NUM}\s*x\b"),
        ("scale", rf"(?<![\w.])x\s*{_NUM}\b"),
        ("scale", rf"\b{_NUM}\s*times\b"),
        ("scale", rf"\bfactor{_FILL}{_NUM}"),
    )
)
_SCALE_BY = re.compile(rf"\b(?:by|to)\s+{_NUM}\b(?!\s*(?:px|pixels?|percent|degrees?))")

#: Which degradations take each kind of number, and the parameter name it becomes.
_NUMBER_TARGETS: dict[str, dict[Degradation, str]] = {
    "quality": {J: "quality"},
    "sigma": {N: "sigma", D: "sigma"},
    "angle": {M: "angle"},
    "length": {M: "length"},
    "radius": {D: "radius"},
    "pixels": {D: "radius", M: "length"},
    "scale": {L: "scale"},
}
#: Numbers that name their degradation by themselves ("quality 30" is JPEG, "2x" is resolution).
_IMPLIED: dict[str, Degradation] = {"quality": J, "angle": M, "length": M, "scale": L}

#: (degradation, param) -> (low, high, inclusive low, what) for range checks.
_RANGES: dict[tuple[Degradation, str], tuple[float, float, bool, str]] = {
    (N, "sigma"): (0.0, 0.3, False, "noise sigma (0-0.3, or 0-76 of 255)"),
    (D, "sigma"): (0.0, 20.0, False, "blur sigma (0-20 px)"),
    (D, "radius"): (0.0, 20.0, False, "blur radius (0-20 px)"),
    (M, "length"): (0.0, 60.0, False, "motion length (0-60 px)"),
    (M, "angle"): (-180.0, 180.0, True, "motion angle (-180-180 degrees)"),
    (J, "quality"): (1.0, 100.0, True, "JPEG quality (1-100)"),
    (L, "scale"): (1.0, 8.0, False, "upscale factor (1-8x)"),
}

_STRENGTH_PHRASES: tuple[tuple[re.Pattern[str], float], ...] = tuple(
    (re.compile(rf"\b(?:{p})\b"), v)
    for p, v in (
        (
            r"very slightly|ever so slightly|a tiny bit|a teeny bit|the tiniest bit|a smidge|just a touch|a hint|"
            r"very gently|very lightly|very mildly|a tiny amount",
            0.15,
        ),
        (
            r"not too much|not too strong(?:ly)?|(?:don'?t|do not|dont|without) overdo(?:ing)? it|not completely|"
            r"not fully|not all the way|some of the|a fair bit|half strength|halfway|by half",
            0.5,
        ),
        (
            r"completely|fully|entirely|totally|as much as possible|maximum|max|all the way|full strength|"
            r"thoroughly",
            1.0,
        ),
        (
            r"(?<!too )(?<!less )(?<!more )(?:strongly|strong)|(?<!too )(?<!less )(?<!more )aggressive(?:ly)?|"
            r"a lot|lots|(?<!too )heavily|significantly|"
            r"considerably|substantially|most of the",
            0.8,
        ),
        (r"moderately|moderate|somewhat|medium|partially|partly|reasonably", 0.5),
        (
            r"a little bit|a little|a bit|a touch|a tad|slightly|slight|gently|gentle|lightly|a light|mildly|mild|"
            r"subtly|subtle|softly",
            0.3,
        ),
    )
)
_AMOUNT_STRONG = re.compile(r"\b(?:much|way|far)\b")
_PARTIAL_KEEP = re.compile(r"\b(?:some|a bit of|a little|a little bit of|a touch of|a hint of|slight|a tad of)\b")

_PERCEPTION_FIRST = re.compile(
    r"\b(?:don'?t|do not|dont) care (?:about|for) (?:accuracy|fidelity|faithfulness|being (?:accurate|faithful))\b"
)
#: "perception over fidelity": the second one is what matters less; it is dropped before reading preferences.
_OVER = re.compile(
    r"\b(?:perception|perceptual quality|looks|fidelity|accuracy|faithfulness)\s+(?:over|rather than|before)\s+"
    r"(?:perception|perceptual quality|looks|fidelity|accuracy|faithfulness)\b"
)
_FIDELITY = re.compile(
    r"\bfaithful(?:ly|ness)?\b|\bfidelity\b|\btrue to (?:the )?original\b|\baccura(?:te|cy)\b|"
    r"\b(?:don'?t|do not|dont|never)\s+(?:invent|hallucinate|make up|fabricate|add fake)\w*"
    r"(?:\s+(?:any|new|fake|extra))?(?:\s+(?:details?|things|textures?|content|stuff))?|"
    r"\bno\s+(?:hallucinat\w*|invented|made up|fake|fabricated|ai)(?:\s+(?:details?|textures?|content|look|stuff))?|"
    r"\bnothing fake\b|\brealistic\b|\bauthentic\b|\bconservative(?:ly)?\b|\b(?:look|looks|looking)\s+natural\b|"
    r"\b(?:keep|stay|more|be)\s+(?:it\s+)?natural\b|\bnatural (?:looking|look)\b|\bclose to the original\b"
)
_PERCEPTION = re.compile(
    r"\b(?:look|looking)\s+(?:as good as possible|nice|good|great|better|sharp|crisp|amazing|beautiful|stunning|"
    r"pretty|gorgeous|awesome|professional|pleasing|fantastic|polished|vivid)\b|"
    r"\b(?:nice|good|great|better|best)\s+looking\b|\bperceptu\w*|\bperception\b|\bpop\b|\beye catching\b|"
    r"\bvisually pleasing\b|\bas good as possible\b|\bvivid\b|\bprettier\b"
)

_SEMANTIC_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^(?:this|it|that)\s*(?:is|'s|was)\s+(?:a|an)\s+(?:photo|picture|image|shot|pic|snapshot|scan|portrait|"
        r"photograph)\s+of\s+(?P<x>.+)$",
        r"(?:^|\b)(?:photo|picture|image|shot|pic|snapshot|portrait|photograph)\s+of\s+(?P<x>.+)$",
        r"^(?:this|it|that)\s*(?:is|'s)\s+(?P<x>(?:a|an|my|our|the)\s+.+)$",
        r"^(?:it|this)\s+(?:shows|depicts)\s+(?P<x>.+)$",
        r"^the subject is\s+(?P<x>.+)$",
    )
)
_SEMANTIC_STOP = re.compile(r"\s+(?:please|pls|thanks|thank you)$")
_DETERMINERS = re.compile(r"^(?:a|an|the|my|our|his|her|their|some|this|these|those)\s+")
_NOT_CONTENT = re.compile(
    r"^(?:bit|little|lot|tad|mess|disaster|touch|photo|picture|image|shot|pic|scan|screenshot|selfie|"
    r"night shot|old photo)\b|\b(?:photo|picture|image|shot|pic|scan|screenshot)$"
)

_UNSUPPORTED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), what)
    for p, what in (
        (r"\bwatermarks?\b|\blogos?\b", "removing watermarks or logos"),
        (r"\bscratch(?:es|ed)?\b|\bdust\b|\bstains?\b|\bcreases?\b", "repairing scratches, dust or stains"),
        (r"\b(?:lens )?flares?\b|\bglare\b|\breflections?\b", "removing flare, glare or reflections"),
        (r"\bmoir[eé]\b", "removing moire patterns"),
        (r"\bvignett\w*", "vignetting"),
        (r"\bred ?eyes?\b", "red-eye correction"),
        (
            r"\bcrop\w*|\brotat\w*|\bflip\w*|\bmirror\b|\bstraighten\w*|\btilted\b|\bcrooked\b|\bskewed\b",
            "cropping, rotating or straightening",
        ),
        (r"\bblack_and_white\b|\bgrayscale\b|\bmonochrome\b|\bdesaturat\w*", "converting to black and white"),
        (r"\bcolori[sz]\w*", "colourising"),
        (
            r"\b(?:remove|erase|delete|get rid of|take out|clean up|fix)\s+(?:the\s+|that\s+|this\s+|all\s+the\s+)?"
            r"(?:person|people|man|woman|guy|girl|background|objects?|trees?|cars?|wires?|power lines|text|"
            r"photobomber|snow(?:flakes)?|shadows?|sky|tourists?|faces?)\b",
            "removing objects, text, snow or shadows",
        ),
        (
            r"\blook like (?:a|an)\b|\bpainting\b|\bcartoon\w*|\banime\b|\bsketch\b|\bstyle\b|\bfilter\b|"
            r"\bvintage\b|\bsepia\b",
            "changing the style",
        ),
        (r"\bover ?expos\w*|\bblown (?:out )?highlights\b", "darkening an overexposed photo"),
        (
            r"\bdownscal\w*|\bdownsampl\w*|\bshrink\w*|\bsmaller\b|\breduce the (?:size|resolution)\b",
            "making it smaller",
        ),
        (r"\bsaturat\w*|\bvibran\w*|\bcontrast\b|\bhdr\b", "saturation, contrast or HDR edits"),
        (r"\binpaint\w*|\bfill in\b|\bmissing parts?\b", "filling in missing parts"),
    )
)

_PROTECT = re.compile(
    r"\b(?:keep|keeping|kept|preserve|preserving|retain|retaining|maintain|maintaining|leave|leaving)\b(?!\s+out)|"
    r"\b(?:don'?t|do not|dont|never|without|not)\s+(?:touch|touching|change|changing|alter|altering|remove|removing|"
    r"lose|losing|kill|killing|fix|fixing|reduce|reducing|correct|correcting|affect|affecting|mess)\b|"
    r"\b(?:except|apart from|other than)\b|\bnot the\b|"
    r"\b(?:intentional|intended|on purpose|deliberate|deliberately|artistic|by design|meant to be)\b|"
    r"\bi (?:like|love)\b"
)
_SKIP = re.compile(
    r"\bskip(?:ping)?\b|\bno\b|\bdon'?t\b|\bdo not\b|\bdont\b|\bnever\b|\bwithout\b|\bforget(?: about)?\b|"
    r"\bdrop\b|\bleave out\b|\bno need\b|\bnot needed\b|\bunnecessary\b|"
    r"\b(?:is|are|looks?|seems?)\s+(?:fine|ok|okay|good|alright|right|correct)\b|\bnot\b|\bisn'?t\b|\baren'?t\b"
)
_LESS_WORD = re.compile(r"\b(?:less|fewer)\b")
_MORE_WORD = re.compile(r"\bmore\b")
_STILL = re.compile(r"\bstill\b|\bnot\b[^,]*\benough\b")
_BRING_BACK = re.compile(r"\b(?:bring|put|add)\b[^#]*?\bback\b|\badd(?:ing)?\b|\breintroduce\b")
_TOO = re.compile(r"\btoo\b(?!\s*$)")
_LESS_SIG = re.compile(
    r"\bless\b|\btone (?:it |that |this )?down\b|\bdial (?:it |that |this )?(?:back|down)\b|\bback off\b|"
    r"\bease (?:off|up)\b|\bweaker\b|\bgentler\b|\bmilder\b|\bsubtler\b|\bsofter\b|\bnot so (?:much|strong)\b|"
    r"\boverdone\b|\boverdid\b|\bover ?(?:processed|cooked|done|sharpened|smoothed|brightened)\b|"
    r"\btoo (?:much|strong|aggressive|harsh|heavy|intense|far|extreme)\b|\bturn (?:it |that )?down\b|"
    r"\breduce the (?:effect|strength)\b|\bweaken\b"
)
_MORE_SIG = re.compile(
    r"\bmore\b|\bstronger\b|\bharder\b|\bfurther\b|\bintensify\b|\bcrank (?:it |that )?up\b|"
    r"\bturn (?:it |that )?up\b|\bpush (?:it |that )?(?:further|harder|more)?\b|\bincrease the (?:effect|strength)\b|"
    r"\bgo (?:harder|further)\b|\bnot\b[^,]*\benough\b|\bagain\b|\bstill\b|\bboost the effect\b"
)
#: With a step word only: "reduce the sharpening" is less of the step, "increase the denoising" more.
_STEP_LESS = re.compile(r"\b(?:reduce|lower|decrease|lessen|weaken|soften)\b")
_STEP_MORE = re.compile(r"\b(?:increase|raise|boost|strengthen|intensify)\b")
_GENERIC_VERB = re.compile(
    r"\b(?:fix|fixed|clean|cleaned|restore|repair|improve|enhance|retouch|touch (?:it |this )?up|"
    r"sort (?:it |this )?out|tidy (?:it |this )?up|make (?:it|this) better|clear (?:it |this )?up|remove|correct|"
    r"get rid of|deal with|handle)\b"
)
_BLIND = re.compile(
    r"\beverything\b(?!\s+(?:looks?|is|seems|was|appears))|\bwhatever\b|\banything (?:wrong|you)\b|"
    r"\ball (?:of )?(?:the )?(?:degradations?|problems?|issues?|defects?|flaws?|artifacts?|imperfections?|damage)\b|"
    r"\b(?:every|any) (?:degradations?|problems?|issues?|defects?|flaws?|imperfections?)\b|"
    r"\bdo your (?:thing|magic)\b|\bwork your magic\b|\bthe works\b|\ball of it\b|\bblind\b"
)
_VERBISH = re.compile(
    r"\b(?:is|are|was|were|'s|its|looks?|seems?|has|have|had|got|there|too|just|only|but|reduce|kill|remove|take|"
    r"cut|make|can|could|please|want|need|lift|boost|fix|clean|get|do)\b"
)
_REPLACE = re.compile(r"\binstead\b|\bonly\b")
_UNDO = re.compile(
    r"\b(?:undo|revert|roll ?back|take (?:that|it|this) back|ctrl ?z|go back|put it back|"
    r"reverse (?:that|it|the last))\b"
)
_RESET = re.compile(
    r"\b(?:start (?:over|again|from scratch)|reset|from scratch|(?:undo|revert) (?:everything|all)|"
    r"back to (?:the )?original)\b"
)
_EXPORT = re.compile(
    r"\b(?:save|export|download|write (?:it )?out|done|finished|we'?re done|keep (?:this|that|the current) "
    r"(?:one|version|result))\b"
)
_FORMAT = re.compile(r"\b(?:as|to|in)\s+(?:an?\s+)?(png|jpe?g|jpg|tiff?|webp|bmp)\b(?:\s+files?)?")
_FORMATS: dict[str, ImageFormat] = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "tif": "tiff", "tiff": "tiff",
                                    "webp": "webp", "bmp": "bmp"}  # fmt: skip

_UNICODE: dict[str, str | int | None] = {"’": "'", "‘": "'", "“": '"', "”": '"', "×": "x", "–": "-", "—": "-"}
_NUMBER_WORDS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8"}
_PATH = re.compile(
    r"(?<![\w/\\])(?:~|\.{1,2})?/[A-Za-z_][\w./~-]*|(?<![\w/\\])[A-Za-z]:\\[\w.\\ -]+|"
    r"(?<![\w/\\])[\w./~-]*\.(?:png|jpe?g|tiff?|webp|bmp)\b",
    re.IGNORECASE,
)
_SPLIT = re.compile(
    r"[,;!?]|(?<!\d)\.|\.(?!\d)|\b(?:but|and|then|also|plus|while|though|however|as well as|after that|afterwards)\b"
)
_MASK = "#"

# Known words are never corrected: every word of the vocabulary and the phrases above, plus common words.
_KNOWN_WORDS = frozenset(
    set(re.findall(r"[a-z]+", " ".join(w.pattern.pattern for w in _VOCABULARY)))
    | set(_FUZZY_TARGETS)
    | _COMMON_WORDS
    | {"pathtoken", "salt", "pepper"}
)


# ----------------------------------------------------------------------------------- normalisation


def _osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (edits and adjacent swaps), capped at ``limit + 1``."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def _correct(word: str) -> str:
    """British -> American spelling and typo correction of one lower-case word."""
    if word in _BRITISH:
        return _BRITISH[word]
    if word.startswith("colour"):
        return "color" + word[len("colour") :]
    if len(word) < 5 or word in _KNOWN_WORDS:
        return word
    squeezed = re.sub(r"(.)\1{2,}", r"\1\1", word)
    if squeezed in _KNOWN_WORDS:
        return squeezed
    single = re.sub(r"(.)\1+", r"\1", word)
    if single in _KNOWN_WORDS:
        return single
    limit = 1 if len(word) < 8 else 2
    scored = sorted((_osa_distance(word, t, limit), t) for t in _FUZZY_TARGETS)
    best = [t for d, t in scored if d == scored[0][0] and d <= limit]
    if len(best) == 1:
        logger.debug("request: read %r as %r", word, best[0])
        return best[0]
    return word


def _normalise(text: str) -> tuple[str, list[str]]:
    """Lower-case, spelling-normalised text with paths replaced by placeholders, and the paths."""
    paths: list[str] = []

    def keep_path(match: re.Match[str]) -> str:
        paths.append(match.group(0))
        return f" pathtoken{len(paths) - 1} "

    t = _PATH.sub(keep_path, text)
    t = t.lower()
    t = t.translate(str.maketrans(_UNICODE))
    t = t.replace("°", " degrees").replace("σ", " sigma ").replace("w/o", "without").replace("w/", "with ")
    t = re.sub(r"(\d)\s*%", r"\1 percent", t)
    t = re.sub(r"[()\[\]{}\"=:*_]", " ", t)
    t = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", t)
    t = re.sub(r"[+&]", " and ", t)
    t = re.sub(r"[a-z]+", lambda m: _correct(m.group(0)), t)
    t = re.sub(r"\bde (noise|noising|blur|blurring|haze|hazing|rain|raining|jpeg|block|blocking|fog)\b", r"de\1", t)
    t = re.sub(r"\bsalt and pepper\b", "salt_and_pepper", t)
    t = re.sub(r"\bblack and white\b|\bb ?and ?w\b", "black_and_white", t)
    t = re.sub(r"\b(everything|all) but\b", r"\1 except", t)
    t = re.sub(r"\bundo the (?:damage|effects?)(?: (?:from|of|caused by))?\b", "fix the", t)
    t = re.sub(r"\bas much (?:of )?(?:the )?((?:[a-z]+ ){0,3}?)as (?:possible|you can)\b", r"maximum \1", t)
    t = re.sub(
        r"\b(factor of|by) (two|three|four|five|six|seven|eight)\b|"
        r"\b(two|three|four|five|six|seven|eight)(?= ?(?:x|times)\b)",
        lambda m: (f"{m.group(1)} " if m.group(1) else "") + _NUMBER_WORDS[m.group(2) or m.group(3)],
        t,
    )
    t = re.sub(r"\btwice\b|\bdouble\b", "2x", t)
    t = re.sub(r"\btriple\b", "3x", t)
    t = re.sub(r"\bquadruple\b", "4x", t)
    # "without adding noise": the verifier already refuses steps that raise other degradations.
    t = re.sub(r"\bwithout (?:adding|introducing|amplifying|boosting|creating|increasing|making)\b[^,.;]*", " ", t)
    t = re.sub(r"\b(except|apart from|other than|without)\b", r", \1", t)
    return re.sub(r"\s+", " ", t).strip(), paths


def _mask(text: str, start: int, end: int) -> str:
    return text[:start] + _MASK * (end - start) + text[end:]


def _mask_all(pattern: re.Pattern[str], text: str) -> tuple[str, list[re.Match[str]]]:
    found = list(pattern.finditer(text))
    for m in found:
        text = _mask(text, m.start(), m.end())
    return text, found


# ------------------------------------------------------------------------------------------- analysis


@dataclass
class _Mention:
    degs: tuple[Degradation, ...]
    role: Role
    start: int
    generic_blur: bool
    comparative: bool


@dataclass
class _Clause:
    raw: str
    masked: str = ""
    mentions: list[_Mention] = field(default_factory=list)
    numbers: list[tuple[str, float, int, bool]] = field(default_factory=list)  # kind, value, position, per 255
    strength: float | None = None
    preference: set[str] = field(default_factory=set)
    semantic: str | None = None
    unsupported: list[str] = field(default_factory=list)
    polarity: str = "fix"
    explicit_polarity: bool = False
    targets: list[Degradation] = field(default_factory=list)
    edit_clause: bool = False
    blind: bool = False
    generic: bool = False


@dataclass
class _Analysis:
    fixes: list[Degradation] = field(default_factory=list)
    soft: set[Degradation] = field(default_factory=set)
    protect: list[Degradation] = field(default_factory=list)
    partial: set[Degradation] = field(default_factory=set)
    skip: list[Degradation] = field(default_factory=list)
    strengths: dict[Degradation, float] = field(default_factory=dict)
    strength: float | None = None
    params: dict[Degradation, dict[str, float]] = field(default_factory=dict)
    edits: dict[tuple[str, Degradation | None], Edit] = field(default_factory=dict)
    blind: bool = False
    generic: bool = False
    semantic: str | None = None
    preference: set[str] = field(default_factory=set)
    unsupported: list[str] = field(default_factory=list)
    out_of_range: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)
    replace: bool = False
    recognised: bool = False

    def add_fix(self, d: Degradation, soft: bool = False) -> None:
        if d not in self.fixes:
            self.fixes.append(d)
            if soft:
                self.soft.add(d)
        elif not soft:
            self.soft.discard(d)

    def add_edit(self, edit: Edit) -> None:
        # The same edit twice ("that's overdone, tone it down a little"): the later wording wins.
        self.edits[(edit.action, edit.target)] = edit


def _semantic(clause: str) -> tuple[str, int, int] | None:
    for pattern in _SEMANTIC_PATTERNS:
        match = pattern.search(clause)
        if not match:
            continue
        value = _SEMANTIC_STOP.sub("", match.group("x").strip())
        while _DETERMINERS.match(value):
            value = _DETERMINERS.sub("", value, count=1)
        if not value or len(value) > 80 or len(value.split()) > 8 or _NOT_CONTENT.search(value):
            return None
        if any(w.pattern.search(value) for w in _VOCABULARY) or any(p.search(value) for p, _ in _STRENGTH_PHRASES):
            return None
        return value, match.start("x"), match.end("x")
    return None


def _scan_clause(raw: str, paths: list[str], previous_polarity: str | None) -> tuple[_Clause, list[Edit]]:
    """Read one clause: everything but the outcome of its mentions (that needs the whole request)."""
    c = _Clause(raw=raw)
    edits: list[Edit] = []
    c.unsupported = [what for pattern, what in _UNSUPPORTED if pattern.search(raw)]
    masked = raw
    over = _OVER.search(masked)
    if over:  # keep the first word, drop "over <second>"
        first_end = over.start() + len(over.group(0).split()[0])
        masked = _mask(masked, first_end, over.end())
    masked, found = _mask_all(_PERCEPTION_FIRST, masked)
    if found:
        c.preference.add("perception")
    masked, found = _mask_all(_FIDELITY, masked)
    if found:
        c.preference.add("fidelity")
    masked, found = _mask_all(_PERCEPTION, masked)
    if found:
        c.preference.add("perception")
    sem = _semantic(masked)
    if sem is not None:
        c.semantic = sem[0]
        masked = _mask(masked, sem[1], sem[2])

    is_export = bool(_EXPORT.search(masked))
    if is_export:
        fmt: ImageFormat | None = None
        match = _FORMAT.search(masked)
        if match:
            fmt = _FORMATS[match.group(1)]
            masked = _mask(masked, match.start(), match.end())
        index = re.search(r"pathtoken(\d+)", masked)
        path = paths[int(index.group(1))] if index and int(index.group(1)) < len(paths) else None
        edits.append(Edit(action="export", path=path, format=fmt))
        c.edit_clause = True
    masked = re.sub(r"pathtoken\d+", lambda m: _MASK * len(m.group(0)), masked)

    for kind, pattern in _NUMBER_PATTERNS:
        for m in list(pattern.finditer(masked)):
            value = float(m.group(1))
            flag = bool(m.lastindex and m.lastindex >= 2 and m.group(2))
            c.numbers.append((kind, value, m.start(), flag))
            masked = _mask(masked, m.start(), m.end())

    hits: list[tuple[int, float]] = []
    for pattern, value in _STRENGTH_PHRASES:
        for m in list(pattern.finditer(masked)):
            hits.append((m.start(), value))
            masked = _mask(masked, m.start(), m.end())
    if hits:
        c.strength = max(hits)[1]

    before_mentions = masked
    spans: list[tuple[int, int, _Word]] = []
    for word in _VOCABULARY:
        spans.extend((m.start(), m.end(), word) for m in word.pattern.finditer(masked))
    spans.sort(key=lambda s: (-(s[1] - s[0]), s[0]))
    taken: list[tuple[int, int]] = []
    for start, end, word in spans:
        if any(start < e and s < end for s, e in taken):
            continue
        taken.append((start, end))
        c.mentions.append(_Mention(word.degs, word.role, start, word.generic_blur, word.comparative))
    for start, end in taken:
        masked = _mask(masked, start, end)
    c.mentions.sort(key=lambda m: m.start)
    if not any(kind == "scale" for kind, *_ in c.numbers) and any(L in m.degs for m in c.mentions):
        for m in list(_SCALE_BY.finditer(masked)):
            c.numbers.append(("scale", float(m.group(1)), m.start(), False))
            masked = _mask(masked, m.start(), m.end())
    c.masked = masked

    if _RESET.search(masked):
        edits.append(Edit(action="reset"))
        c.edit_clause = True
    elif _UNDO.search(masked):
        target = c.mentions[0].degs[0] if c.mentions else None
        edits.append(Edit(action="undo", target=target))
        c.edit_clause = True

    if _PROTECT.search(masked):
        c.polarity, c.explicit_polarity = "protect", True
    elif _SKIP.search(masked):
        c.polarity, c.explicit_polarity = "skip", True
    elif (
        previous_polarity in ("protect", "skip")
        and not _VERBISH.search(masked)
        and not any(m.role == "step" for m in c.mentions)
    ):
        c.polarity = previous_polarity  # "keep the grain and the bokeh": no verb of its own
    c.blind = bool(_BLIND.search(before_mentions)) and c.polarity == "fix"
    c.generic = bool(_GENERIC_VERB.search(masked)) and c.polarity == "fix"
    return c, edits


def _amount(c: _Clause) -> float:
    if c.strength is not None:
        return c.strength
    return 0.8 if _AMOUNT_STRONG.search(c.masked) else 0.5


def _in_scope(previous: Intent, d: Degradation) -> bool:
    return d not in previous.protect and d not in previous.skip and (previous.only is None or d in previous.only)


def _resolve_mentions(c: _Clause, an: _Analysis, previous: Intent | None) -> None:
    """Decide what each mention in a clause asks: fix, protect, skip, or a less/more edit."""
    if c.edit_clause:
        return
    text = c.masked
    still, less_word, more_word = (
        bool(_STILL.search(text)),
        bool(_LESS_WORD.search(text)),
        bool(_MORE_WORD.search(text)),
    )
    bring_back, too = bool(_BRING_BACK.search(text)), bool(_TOO.search(text))
    less_sig, more_sig = bool(_LESS_SIG.search(text)), bool(_MORE_SIG.search(text))
    partial = bool(_PARTIAL_KEEP.search(c.raw))
    for m in c.mentions:
        target = m.degs[0]
        if m.role == "reverse":
            outcome = "decrease"
        elif m.role == "step":
            if still or more_sig or _STEP_MORE.search(text):
                outcome = "edit_more"
            elif less_sig or _STEP_LESS.search(text):
                outcome = "edit_less"
            else:
                outcome = c.polarity
        elif m.role == "problem":
            if still:
                outcome = "edit_more"
            elif less_word:
                outcome = "increase"
            elif more_word or bring_back:
                outcome = "decrease"
            else:
                outcome = "fix" if too else c.polarity
        elif m.role == "result":
            if still:
                outcome = "edit_more"
            elif less_word or too:
                outcome = "decrease"
            elif more_word or bring_back or m.comparative or more_sig:
                outcome = "increase"
            else:
                outcome = "increase" if c.polarity == "fix" else c.polarity
        else:  # context (underwater): a soft mention
            outcome = "soft" if c.polarity == "fix" else c.polarity

        if outcome == "increase":
            outcome = "edit_more" if previous is not None and _in_scope(previous, target) else "fix"
        if outcome == "decrease":
            if previous is None:
                an.unsupported.append(f"adding back {_NAMES[target]} to an image that was not processed")
                continue
            outcome = "edit_less"
        if outcome == "fix":
            for d in m.degs:
                an.add_fix(d)
                if d not in c.targets:
                    c.targets.append(d)
        elif outcome == "soft":
            for d in m.degs:
                an.add_fix(d, soft=True)
                if d not in c.targets:
                    c.targets.append(d)
        elif outcome == "protect":
            for d in m.degs:
                if d not in an.protect:
                    an.protect.append(d)
                if partial:
                    an.partial.add(d)
        elif outcome == "skip":
            for d in m.degs:
                if d not in an.skip:
                    an.skip.append(d)
                if previous is not None:
                    an.add_edit(Edit(action="skip", target=d))
        elif outcome == "edit_more":
            an.add_edit(Edit(action="more", target=target, amount=_amount(c)))
        elif outcome == "edit_less":
            an.add_edit(Edit(action="less", target=target, amount=_amount(c)))


def _absorb_generic_blur(clauses: Sequence[_Clause]) -> None:
    """A generic blur word means motion blur when the request mentions motion and no defocus cue."""
    mentions = [m for c in clauses for m in c.mentions]
    motion = any(M in m.degs for m in mentions)
    defocus_specific = any(D in m.degs and not m.generic_blur for m in mentions)
    if motion and not defocus_specific:
        for m in mentions:
            if m.generic_blur:
                m.degs = (M,)


def _attach_numbers(clauses: Sequence[_Clause], an: _Analysis) -> None:
    seen: dict[tuple[Degradation, str], float] = {}
    for i, c in enumerate(clauses):
        earlier = [t for prev in clauses[:i] for t in prev.targets]
        for kind, value, pos, per255 in c.numbers:
            if kind == "strength":
                s = value / 100.0 if per255 or value > 1.0 else value
                if not 0.0 <= s <= 1.0:
                    an.out_of_range.append(f"strength {value:g} (0-1 or 0-100 %)")
                    continue
                c.strength = s
                continue
            accepts = _NUMBER_TARGETS[kind]
            local = [m for m in c.mentions if any(d in accepts for d in m.degs)]
            before = [m for m in local if m.start <= pos]
            chosen: Degradation | None = None
            if before:
                chosen = next(d for d in before[-1].degs if d in accepts)
            elif local:
                chosen = next(d for d in local[0].degs if d in accepts)
            elif kind in _IMPLIED:
                chosen = _IMPLIED[kind]
            else:
                candidates = [d for d in dict.fromkeys(earlier[::-1]) if d in accepts]
                if not candidates:
                    candidates = [d for d in an.fixes if d in accepts]
                if len(candidates) >= 1 and (earlier or len(candidates) == 1):
                    chosen = candidates[0]
            if chosen is None:
                an.ambiguous.append(f"which step '{kind} {value:g}' applies to")
                continue
            name = accepts[chosen]
            number = value
            if chosen == N and name == "sigma" and (per255 or value >= 1.0):
                number = value / 255.0
            number = round(number, 4)
            low, high, inclusive, what = _RANGES[(chosen, name)]
            if not ((low <= number) if inclusive else (low < number)) or number > high:
                shown = f"{value:g}/255 = {number:g}" if number != value else f"{value:g}"
                an.out_of_range.append(f"{what}: {shown}")
                continue
            key = (chosen, name)
            if key in seen and seen[key] != number:
                an.ambiguous.append(f"two values for the {name} of {_NAMES[chosen]}: {seen[key]:g} and {number:g}")
                continue
            seen[key] = number
            an.params.setdefault(chosen, {})[name] = number
            if chosen not in c.targets and chosen not in an.protect and chosen not in an.skip:
                c.targets.append(chosen)
            if chosen not in an.protect and chosen not in an.skip:
                an.add_fix(chosen)


def _attach_strengths(clauses: Sequence[_Clause], an: _Analysis) -> None:
    last_targets: list[Degradation] = []
    for c in clauses:
        if c.strength is not None and not c.edit_clause and c.polarity == "fix" and not _has_edits_only(c):
            if c.targets:
                for d in c.targets:
                    an.strengths[d] = c.strength
            elif c.blind or not last_targets:
                an.strength = c.strength
            else:
                for d in last_targets:
                    an.strengths[d] = c.strength
        if c.targets:
            last_targets = list(c.targets)


def _has_edits_only(c: _Clause) -> bool:
    """A clause that only asked for less/more (its strength words are the edit's amount)."""
    return bool(c.mentions) and not c.targets


def _clarify(an: _Analysis, text: str) -> Clarification | None:
    if an.unsupported:
        whats = ", ".join(dict.fromkeys(an.unsupported))
        return Clarification(
            reason="unsupported",
            question=f"Restora removes image degradations ({_CAPABILITIES}); it does not do: {whats}. "
            "What should I fix instead?",
        )
    if an.out_of_range:
        return Clarification(
            reason="out_of_range",
            question=f"{'; '.join(an.out_of_range)} is out of the range I can use. Which value did you mean?",
        )
    if an.ambiguous:
        return Clarification(reason="ambiguous", question=f"Please tell me {'; '.join(an.ambiguous)}.")
    clash = [d for d in an.fixes if d not in an.soft and ((d in an.protect and d not in an.partial) or d in an.skip)]
    if clash:
        names = " and ".join(_NAMES[d] for d in clash)
        return Clarification(
            reason="contradiction",
            question=f"You asked both to remove and to keep the {names}. Should I remove it or leave it alone?",
        )
    if len(an.preference) > 1:
        return Clarification(
            reason="contradiction",
            question="You asked for a faithful result and for a nicer-looking one; which matters more?",
        )
    if not an.recognised:
        return Clarification(
            reason="unknown",
            question=f"I could not tell what to do from {text[:200]!r}. I can remove {_CAPABILITIES}, "
            "upscale, or fix everything I find; what would you like?",
        )
    return None


def _analyse(text: str, previous: Intent | None) -> _Analysis:
    norm, paths = _normalise(text)
    an = _Analysis()
    an.replace = previous is not None and bool(_REPLACE.search(norm))
    clauses: list[_Clause] = []
    polarity: str | None = None
    for raw in (part.strip() for part in _SPLIT.split(norm)):
        if not raw:
            continue
        clause, edits = _scan_clause(raw, paths, polarity)
        for edit in edits:
            an.add_edit(edit)
        clauses.append(clause)
        polarity = clause.polarity
    _absorb_generic_blur(clauses)
    for c in clauses:
        _resolve_mentions(c, an, previous)
        an.unsupported.extend(c.unsupported)
        an.preference |= c.preference
        an.semantic = c.semantic or an.semantic
        an.blind = an.blind or c.blind
        an.generic = an.generic or c.generic
    _attach_numbers(clauses, an)
    # Generic edits: "less", "too much", "stronger" in a clause that names nothing else.
    for c in clauses:
        if c.mentions or c.numbers or c.preference or c.semantic or c.unsupported or c.edit_clause:
            continue
        if _MORE_SIG.search(c.masked):
            an.add_edit(Edit(action="more", amount=_amount(c)))
            c.edit_clause = True
        elif _LESS_SIG.search(c.masked):
            an.add_edit(Edit(action="less", amount=_amount(c)))
            c.edit_clause = True
    _attach_strengths(clauses, an)
    for d in list(an.partial):
        if d in an.fixes:
            an.protect.remove(d)
            an.strengths.setdefault(d, 0.5)
    if not an.fixes and an.generic:
        an.blind = True
    an.recognised = bool(
        any(c.mentions or c.numbers or c.strength is not None or c.semantic for c in clauses)
        or an.edits
        or an.blind
        or an.generic
        or an.preference
        or an.unsupported
    )
    return an


# ------------------------------------------------------------------------------------------- parsing


def parse_request(text: str | None, previous: Intent | None = None) -> Intent:
    """Read a request into an :class:`Intent` (see the module docstring for the conventions).

    Args:
        text: the request as typed; ``None`` or blank means "fix whatever is found".
        previous: the intent of the previous turn, for follow-ups ("less", "undo", "skip dehazing",
            "also remove the haze"); the result starts from it.

    Returns:
        The intent; when :attr:`Intent.needs_clarification` is true, its other fields are the
        previous intent's (nothing is guessed) and ``clarification.question`` says what to ask.
    """
    base = previous.model_copy(deep=True) if previous is not None else Intent()
    base.edits, base.clarification, base.text = [], None, text
    if text is None or not text.strip():
        return base
    if len(text) > MAX_REQUEST_CHARS:
        base.clarification = Clarification(
            reason="unknown",
            question=f"The request is {len(text)} characters long; please keep it under "
            f"{MAX_REQUEST_CHARS} and say what to fix.",
        )
        return base
    an = _analyse(text, previous)
    question = _clarify(an, text)
    if question is not None:
        base.clarification = question
        return base
    return _merge(base, an, previous is None)


def _merge(base: Intent, an: _Analysis, first: bool) -> Intent:
    """The new intent: the previous one (or the defaults) edited by what this request says."""
    protect = [d for d in an.protect if d not in an.partial]
    fixes = [d for d in an.fixes if not ((d in an.soft) and (d in protect or d in an.skip))]
    blind = base.blind
    only = base.only
    if an.blind:
        blind, only = True, None
    elif first or (an.replace and fixes):
        only = list(fixes) if fixes else None
        blind = False if fixes else blind
    elif only is not None:
        only = only + [d for d in fixes if d not in only]
    new_protect = [d for d in base.protect if d not in fixes] + protect
    new_skip = [d for d in base.skip if d not in fixes and d not in protect] + an.skip
    if only is not None:
        only = [d for d in only if d not in new_protect and d not in new_skip]
    params = {d: dict(v) for d, v in base.params.items()}
    for d, values in an.params.items():
        params.setdefault(d, {}).update(values)
    return Intent(
        only=only,
        protect=new_protect,
        skip=new_skip,
        blind=blind,
        strength=an.strength if an.strength is not None else base.strength,
        strengths={**base.strengths, **an.strengths},
        params=params,
        semantic=an.semantic or base.semantic,
        preference=next(iter(an.preference)) if an.preference else base.preference,  # type: ignore[arg-type]
        edits=list(an.edits.values()),
        clarification=None,
        text=base.text,
    )


# ----------------------------------------------------------------------------------- tool parameters


def tool_params(intent: Intent, target: Degradation, spec: ToolSpec) -> dict[str, Any]:
    """The parameters of tool ``spec`` restoring ``target`` that the request fixes.

    Maps the request's strength and numbers onto the parameters the tool declares (others are
    left to the tool's own ``suggest``): noise ``sigma`` -> ``sigma``; blur ``sigma`` -> a
    Gaussian PSF, ``radius`` -> a disk, motion ``length``/``angle`` -> a motion PSF; JPEG
    ``quality`` -> ``quality``; ``scale`` -> ``factor``. Values outside the tool's ranges are
    dropped with a log message.
    """
    declared = {p.name for p in spec.params}
    wanted: dict[str, Any] = {}
    strength = intent.strengths.get(target, intent.strength)
    if strength is not None:
        wanted["strength"] = strength
    numbers = intent.params.get(target, {})
    if target == N and "sigma" in numbers:
        wanted["sigma"] = numbers["sigma"]
    elif target == D and "sigma" in numbers:
        wanted.update(kind="gaussian", radius=numbers["sigma"])
    elif target == D and "radius" in numbers:
        wanted.update(kind="disk", radius=numbers["radius"])
    elif target == M and ("length" in numbers or "angle" in numbers):
        wanted.update(kind="motion", **{k: numbers[k] for k in ("length", "angle") if k in numbers})
    elif target == J and "quality" in numbers:
        wanted["quality"] = int(numbers["quality"])
    elif target == L and "scale" in numbers:
        wanted["factor"] = numbers["scale"]
    out: dict[str, Any] = {}
    for name, value in wanted.items():
        if name not in declared:
            continue
        try:
            out[name] = spec.param(name).validate(value)
        except ValueError as exc:
            logger.info("request: %s for %s not used: %s", name, spec.name, exc)
    if "kind" in out and "radius" not in out and "length" not in out and "angle" not in out:
        out.pop("kind")
    return out


# ----------------------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    """Exact-intent accuracy on a paraphrase set."""

    total: int
    correct: int
    by_category: dict[str, tuple[int, int]]
    failures: list[dict[str, Any]]
    by_split: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Fraction of cases whose parsed intent equals the expected one exactly."""
        return self.correct / self.total if self.total else 0.0


def expected_intent(expect: dict[str, Any]) -> Intent:
    """The :class:`Intent` a paraphrase case expects (``clarify: reason`` is the shorthand)."""
    data = dict(expect)
    reason = data.pop("clarify", None)
    if reason is not None:
        data["clarification"] = {"reason": reason, "question": ""}
    return Intent.model_validate(data)


def evaluate(path: str | Path) -> EvalResult:
    """Parse every case of a paraphrase YAML file and compare with its expected intent exactly."""
    import yaml

    cases = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["cases"]
    by_category: dict[str, list[int]] = {}
    by_split: dict[str, list[int]] = {}
    failures: list[dict[str, Any]] = []
    correct = 0
    for case in cases:
        previous = Intent.from_dict(case["previous"]) if "previous" in case else None
        got = parse_request(case["text"], previous).comparable()
        want = expected_intent(case.get("expect") or {}).comparable()
        ok = got == want
        correct += ok
        for table, key in ((by_category, case["cat"]), (by_split, case.get("split", "main"))):
            stats = table.setdefault(key, [0, 0])
            stats[0] += ok
            stats[1] += 1
        if not ok:
            diff = {k: {"got": got[k], "want": want[k]} for k in want if got[k] != want[k]}
            failures.append(
                {"cat": case["cat"], "split": case.get("split", "main"), "text": case["text"], "diff": diff}
            )
    return EvalResult(
        len(cases),
        correct,
        {k: (v[0], v[1]) for k, v in by_category.items()},
        failures,
        {k: (v[0], v[1]) for k, v in by_split.items()},
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: parse a request, or ``--eval FILE`` for the paraphrase accuracy."""
    parser = argparse.ArgumentParser(prog="python -m agent.planning.request", description=__doc__.splitlines()[0])
    parser.add_argument("text", nargs="?", help="a request to parse")
    parser.add_argument("--eval", metavar="YAML", help="paraphrase set to evaluate (tests/data/paraphrases.yaml)")
    parser.add_argument("--previous", metavar="JSON", help="previous intent as JSON, for a follow-up")
    args = parser.parse_args(argv)
    if args.eval:
        result = evaluate(args.eval)
        print(f"exact-intent accuracy: {result.correct}/{result.total} = {result.accuracy:.1%}")
        for split, (ok, n) in sorted(result.by_split.items()):
            print(f"  split {split:<9} {ok:>3}/{n:<3} {ok / n:6.1%}")
        for cat, (ok, n) in sorted(result.by_category.items()):
            print(f"  {cat:<15} {ok:>3}/{n:<3} {ok / n:6.1%}")
        if result.failures:
            print(f"failures ({len(result.failures)}):")
            for f in result.failures:
                print(f"  [{f['split']}/{f['cat']}] {f['text']!r}: {json.dumps(f['diff'], default=str)}")
        return 0
    if not args.text:
        parser.error("give a request or --eval FILE")
    previous = Intent.from_dict(json.loads(args.previous)) if args.previous else None
    print(json.dumps(parse_request(args.text, previous).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
