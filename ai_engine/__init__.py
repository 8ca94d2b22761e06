"""ai_engine package."""
