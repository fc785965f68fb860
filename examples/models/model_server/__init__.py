"""An Open Inference Protocol (KServe v2 REST) model server for the example model images.

One package serves both examples: ``protocol`` (the v2 JSON messages), ``batching`` (a
dynamic batcher), ``metrics`` (Prometheus names for autoscaling), ``app`` (the ASGI app
uvicorn runs), ``weights`` (where a model's files are found), and one module per model
(``iris``: scikit-learn; ``minilm`` with ``bert``: a sentence-embedding BERT on numpy or
CuPy). ``python3 -m model_server --model iris|minilm`` starts it.

This package runs inside the example images and in tests; it must not import ``agent``.
"""

__all__: list[str] = []
