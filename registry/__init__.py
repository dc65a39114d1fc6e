"""Models by name: the catalogue of pullable models, pulling and verifying them, the ones on this
machine, and `resolve(name_or_path)`. Torch-free; knows nothing of how a model is loaded."""
