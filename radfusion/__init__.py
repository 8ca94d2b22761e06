"""radfusion package."""
