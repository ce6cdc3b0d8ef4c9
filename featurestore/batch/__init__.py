"""Spark batch jobs: raw events to offline feature tables."""
