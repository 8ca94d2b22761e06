"""ai_engine/detectors package."""
