"""The error hierarchy shared by the protocol core and the agent."""


class SmkdError(Exception):
    """Base class of every error smkd raises on purpose."""


class ConfigError(SmkdError):
    """A local caller or configuration file asked for something invalid."""


class ProtocolError(SmkdError):
    """A peer sent something this node rejects.

    ``reason`` is a short, stable code (such as ``malformed`` or
    ``bad-signature``) that traces, counters and NACKs carry; ``detail`` is
    for people.
    """

    reason = "protocol-error"

    def __init__(self, detail: str, reason: str | None = None):
        super().__init__(detail)
        if reason is not None:
            self.reason = reason

    @property
    def detail(self) -> str:
        return str(self)


class MalformedMessage(ProtocolError):
    """A datagram or field could not be decoded."""

    reason = "malformed"


class AuthenticationFailed(ProtocolError):
    """A signature, certificate, token or seal did not verify."""

    reason = "authentication-failed"


class AccessDenied(ProtocolError):
    """The group ACL does not admit a host."""

    reason = "not-on-acl"
