"""The pipeline's library: ingest, corpus, training, evaluation, tracking and storage, used by the thin stages."""
