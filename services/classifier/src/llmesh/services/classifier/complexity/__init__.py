"""The trained complexity model: prompt features, the model file format, training and evaluation."""
