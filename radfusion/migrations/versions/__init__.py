"""One module per schema revision, oldest first; each names the revision it follows."""
