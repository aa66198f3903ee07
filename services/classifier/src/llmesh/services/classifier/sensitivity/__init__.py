"""Sensitivity of a request: PII and secret detectors, tenant terms, and the level they imply."""
