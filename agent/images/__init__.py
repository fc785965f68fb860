"""Images: references, the registry client, content store, snapshots, unpack, pulls.

``service.ImageManager`` is the entry point the CRI layer uses; nothing here
imports CRI protobuf types. See ``pull.py`` for how the pieces fit.
"""
