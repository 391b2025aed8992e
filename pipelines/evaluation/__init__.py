"""Evaluation: answers read from generated text, metrics with paired-bootstrap intervals, the gate and the report."""
