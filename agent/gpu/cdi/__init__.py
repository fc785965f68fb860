"""The Container Device Interface: specs, their directories, edits, and the node's own spec."""
