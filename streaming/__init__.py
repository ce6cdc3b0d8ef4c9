"""Kafka stream ingestion (consumers, producers, windows, dead letters). Delivered by the streaming issue."""
