"""The training loop on Ray Train and the learners it trains (FaceInsight, the parser, the specialist)."""
