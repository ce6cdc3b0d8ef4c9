"""Training on point-in-time exports: feature encoding, a streaming torch dataset, the model."""
