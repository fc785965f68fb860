"""NVIDIA GPUs for containers: backends, inventory, CDI, the NVIDIA variables, the facade.

* ``backend`` — the ``GpuBackend`` interface and its value types; ``nvml`` (the
  only ``pynvml`` import, with ``nvml_read``/``nvml_events``), ``simulated``
  (+ ``simulated_file``) and ``NoGpuBackend``; ``factory`` picks one.
* ``inventory`` — a frozen snapshot of the node's GPUs with lookups.
* ``cdi/`` — spec model and parsing, the spec directories, applying edits to an
  OCI spec, driver file discovery, the node's own spec, the ldconfig hook.
* ``env`` — NVIDIA_VISIBLE_DEVICES / _DRIVER_CAPABILITIES / _REQUIRE_* and the
  secure-default policy; ``assignment`` — what a container holds.
* ``service.GpuService`` — the facade ``pods/`` and ``cri/`` call.

Nothing here imports ``pods``, ``cri`` or protobuf types.
"""
