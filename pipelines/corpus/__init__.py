"""The facial-knowledge corpus: records, question templates, the build and its reader."""
