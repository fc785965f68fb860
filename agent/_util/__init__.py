"""Small, boring helpers shared by every package: subprocesses, atomic files.

Nothing here knows about CRI, images or pods; it imports only ``errors``.
"""

# A namespace of leaf modules, imported by name (``from agent._util.proc import run``):
# importing the package stays free, which the CDI hook and the node install (programs
# of their own that start in milliseconds) depend on.
__all__ = ["fs", "locks", "nspin", "proc", "sdnotify", "securejoin", "serde"]
