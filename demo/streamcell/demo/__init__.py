"""The end-to-end demo on the embedded defaults."""
