"""The benchmark (``python -m wyoming_bark.bench``): our core against transformers' on random
weights with Bark's real dimensions, precisions compared, and the real server measured over TCP.
Not used by the server itself."""
