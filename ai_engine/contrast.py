"""Whether a series declares a contrast agent (Contrast/Bolus Agent, 0018,0010).

The Contrast/Bolus module belongs only in images acquired with contrast, but some scanners and technologists
fill the agent with a word that says there was none ("NONE", "No contrast", "N/A"); that is no agent.
"""

from __future__ import annotations

import re

# The whole value, case aside: "NONE", "None given", "No", "N/A", "NC", "0", "-", "No agent", "Unenhanced",
# "No IV contrast", "NON-CONTRAST", "W/O CONTRAST", "without contrast media", "No contrast administered", ...
# (spaces and a closing full stop are free). "Non-ionic contrast" is an agent.
NO_AGENT = (r"\s*(none(\s+given)?|no|nil|n/?a|nc|0|-|no\s+agent|unenhanced"
            r"|(no|non|w/?o|without)[\s-]*((iv|intravenous)\s+)?contrast(\s+(media|agent))?"
            r"(\s+(given|administered|used))?)\s*\.?\s*")


def declares_contrast(agent: str) -> bool:
    """True when ``agent`` names a contrast agent: not empty and not one of the words for none (``NO_AGENT``)."""
    return bool(agent.strip()) and re.fullmatch(NO_AGENT, agent, re.IGNORECASE) is None
