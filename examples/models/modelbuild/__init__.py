"""The hermetic builder of the example model images and model artifacts, without Docker.

``rootfs`` bootstraps Debian root filesystems with mmdebstrap (cached), ``tree`` turns
directory trees and their differences into reproducible layer tars, ``wheels`` fetches
hash-pinned PyPI wheels, ``oci`` writes OCI image layouts (images, and ModelPack model
artifacts), ``push`` sends a layout's tag to a registry, ``recipes`` makes each model version's
weights, ``examples`` says what each example image holds, ``synthetic`` makes a multi-GB
artifact of random weights for benchmarks, and ``build.py`` beside this package is the
command line.

Runs on the build host as root (mmdebstrap's root mode, chroot); needs only the standard
library, mmdebstrap and pip (``isal`` speeds gzip up where installed). Must not import
``agent`` or ``model_server``.
"""

__all__: list[str] = []
