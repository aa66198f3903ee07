"""The router: the public front door that authenticates, classifies, answers from the cache or
routes to a model, and streams the answer back."""
