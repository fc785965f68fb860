"""Small, boring helpers shared by every package: subprocesses, atomic files.

Nothing here knows about CRI, images or pods; it imports only ``errors``.
"""
