"""Data: items read from a file, their vocabulary and split, and the download of names.txt."""
