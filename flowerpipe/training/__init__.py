"""Training parts: strategy choice, checkpoints, the epoch log, the training loops and the saved copy."""
