"""The DVC stages: thin entry points that read params.yaml and call pipelines/."""
