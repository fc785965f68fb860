"""model-agent: a Kubernetes node agent for serving ML models.

Layout (dependencies point down): ``cli`` → ``app`` → ``cri`` → (``pods`` |
``images`` | ``streaming`` | ``metrics`` | ``health``) → (``oci`` | ``network`` |
``gpu``) → ``_util``; ``config``, ``errors``, ``log`` and ``db`` are importable
from anywhere. See docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
