"""ai_engine/synthetic package."""
