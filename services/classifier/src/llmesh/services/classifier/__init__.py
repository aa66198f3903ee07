"""The classifier service: complexity score and tier of a request (a trained cost router),
its sensitivity and the PII it contains, and feedback capture for retraining."""
