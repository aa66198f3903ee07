"""The trained cost router: prompt features, the model file format, training and evaluation."""
