"""featurestore: Feast-based feature store with fast materialization and serving."""
