"""The CRI gRPC edge: the only package that touches CRI protobuf types.

Servicers validate and convert requests, call the domain packages with plain
values, and convert the answers back; ``rpc`` maps errors to status codes.
"""
