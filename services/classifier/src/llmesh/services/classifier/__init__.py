"""The classifier service: complexity score and tier of a request (a trained complexity model),
its sensitivity and the PII it contains, and feedback capture for retraining."""
