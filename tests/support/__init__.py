"""Real test doubles for the image-pull tests: no Docker, no internet, only 127.0.0.x.

- ``registry``: a real ``docker-registry`` process, optionally behind token or basic auth.
- ``token_server``: the distribution token server that the token-auth registry trusts.
- ``layers``: layer tars (every entry type, malicious ones too) and their compressed blobs.
- ``images``: image configs, manifests and indexes in OCI and Docker schema2 form.
- ``push``: a small synchronous client that pushes them over the distribution API.
- ``faults``: a reverse proxy that injects failures, and a second host to redirect to.
"""
