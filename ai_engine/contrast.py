"""Whether a series declares a contrast agent (Contrast/Bolus Agent, 0018,0010).

The Contrast/Bolus module belongs only in images acquired with contrast, but some scanners and technologists
fill the agent with a word that says there was none ("NONE", "No contrast", "N/A"); that is no agent.
"""

from __future__ import annotations

import re

NO_AGENT = r"(none|no|n/?a|nil|non[- ]?contrast|no contrast|without contrast)"


def declares_contrast(agent: str) -> bool:
    """True when ``agent`` names a contrast agent: not empty and not one of the words for none."""
    text = agent.strip()
    return bool(text) and re.fullmatch(NO_AGENT, text, re.IGNORECASE) is None
