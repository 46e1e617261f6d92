"""Errors of the deployment commands: user errors that name the file or address and the fix."""

from __future__ import annotations

from flsuite.errors import UserError


class DeploymentError(UserError):
    """A coordinator or site process that cannot be started, reached or stopped as asked."""


class CoordinatorUnreachable(DeploymentError):
    """The coordinator address does not answer, or answers without a usable TLS certificate."""
