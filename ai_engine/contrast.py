"""Whether a series declares a contrast agent (Contrast/Bolus Agent, 0018,0010).

The Contrast/Bolus module belongs only in images acquired with contrast, but some scanners and technologists
fill the agent with a word that says there was none ("NONE", "No contrast", "N/A"); that is no agent.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pydicom.multival import MultiValue

# The whole value, case aside: "NONE", "None given", "No", "N/A", "NC", "0", "-", "No agent", "Unenhanced",
# "No IV contrast", "NON-CONTRAST", "W/O CONTRAST", "without contrast media", "No contrast administered", ...
# (spaces and a closing full stop are free). "Non-ionic contrast" is an agent.
NO_AGENT = (r"\s*(none(\s+given)?|no|nil|n/?a|nc|0|-|no\s+agent|unenhanced"
            r"|(no|non|w/?o|without)[\s-]*((iv|intravenous)\s+)?contrast(\s+(media|agent))?"
            r"(\s+(given|administered|used))?)\s*\.?\s*")


def declares_contrast(agent: str) -> bool:
    """True when ``agent`` names a contrast agent: not empty and not one of the words for none (``NO_AGENT``)."""
    return bool(agent.strip()) and re.fullmatch(NO_AGENT, agent, re.IGNORECASE) is None


CONTRAST_SIGNS = ("ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusTotalDose", "ContrastBolusStartTime",
                  "ContrastBolusIngredient", "ContrastBolusIngredientConcentration", "ContrastFlowRate")
"""Contrast/Bolus module attributes that say an agent was given where the agent itself (Type 2) is left empty."""


class _Header(Protocol):
    def get(self, keyword: str, default: Any = None, /) -> Any: ...


def _says_given(value: Any) -> bool:
    """A value of a ``CONTRAST_SIGNS`` attribute that says an agent was given: not empty, not a word for none, and
    not an amount that is zero (every value of a multi-valued one)."""
    values = [v for v in (value if isinstance(value, list | tuple | MultiValue) else [value]) if v not in (None, "")]
    for item in values:
        try:
            if float(item) != 0:
                return True
        except (TypeError, ValueError):  # a route, a time, an ingredient
            if declares_contrast(str(item)):
                return True
    return False


def unnamed_agent(header: _Header) -> str:
    """'not named (<keyword> <value>)' for the first ``CONTRAST_SIGNS`` attribute of ``header`` (a pydicom Dataset,
    or the attributes the ingest keeps) that says an agent was given; "" when none does. A contrast head CT with
    its agent left empty was read as a 65 mL subdural."""
    for keyword in CONTRAST_SIGNS:
        value = header.get(keyword)
        if _says_given(value):
            return f"not named ({keyword} {value})"
    return ""
