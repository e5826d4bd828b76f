"""Data: local dataset folders and synthetic inputs (TFDS builders come later)."""
