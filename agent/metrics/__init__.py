"""Prometheus metrics: names in one place, metric objects, the HTTP exposition.

Everything lives in a registry the composition root creates (never the
process-global one), so tests and several agents in one process stay apart.
"""
