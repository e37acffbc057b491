"""Ingestion: pull batches from S3, validate them (per-record checks and Great
Expectations), quarantine what fails, and publish content-hashed snapshots."""
