"""Drift monitoring and alerting. Delivered by the monitoring issue."""
