"""Readers of the real datasets' formats (CelebAMask-HQ, UTKFace, RAF-DB)."""
