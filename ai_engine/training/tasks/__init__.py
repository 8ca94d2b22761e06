"""Per-task training and evaluation modules (see ``ai_engine.training``)."""
