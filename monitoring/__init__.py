"""Monitoring: drift and data-quality reports with Evidently, and the retrain decision."""
