"""The critest mirror's own helpers, where a wrong one would hide a regression."""

from __future__ import annotations

import grpc
import pytest

from tests.integration import test_conformance as conformance


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), "no image volumes")


def test_image_volumes_unimplemented_fails_instead_of_skipping() -> None:
    """critest skips on UNIMPLEMENTED; the agent implements image volumes, so it fails."""
    outcome: BaseException | None = None
    try:
        conformance.skip_if_image_volume_unsupported(_error(grpc.StatusCode.UNIMPLEMENTED), True)
    except BaseException as exc:  # pytest's Skipped and Failed are BaseExceptions
        outcome = exc
    assert isinstance(outcome, pytest.fail.Exception), outcome
    assert "UNIMPLEMENTED" in str(outcome)


def test_other_image_volume_errors_pass_or_raise_as_expected() -> None:
    conformance.skip_if_image_volume_unsupported(None, False)
    conformance.skip_if_image_volume_unsupported(_error(grpc.StatusCode.INVALID_ARGUMENT), True)
    with pytest.raises(grpc.aio.AioRpcError):
        conformance.skip_if_image_volume_unsupported(_error(grpc.StatusCode.INTERNAL), False)
