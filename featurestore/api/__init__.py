"""The HTTP API (FastAPI): online features, catalog, scoring, dataset exports."""
