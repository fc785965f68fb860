"""The Container Device Interface: specs, their directories, edits, and the node's own spec."""

# Modules of their own (``hook`` is a program runc starts; it must import little).
__all__ = ["driver", "edits", "hook", "ldcache", "names", "nodespec", "registry", "spec"]
