"""The DVC pipeline's plumbing: the stage runner, dvc.yaml's generator, the params guard, outputs."""
