"""The exception hierarchy every tool raises, documented in one place.

Every error an agent can meet names the problem *and* the fix: the server turns
:class:`OmnituneError` into an MCP tool error whose text is ``str(error)``.

    OmnituneError
    ├── SettingsError        bad setting, unknown OMNITUNE_* variable
    ├── WorkspaceError       workspace unwritable, database corrupt or too new
    ├── NotFoundError        unknown server / run / job / model
    ├── InvalidRequestError  a request that cannot be honoured as given
    ├── ReadOnlyError        a mutating tool in read-only mode
    ├── CapabilityError      vllm-omni not found or not understood
    │   └── UnregisteredPipeline  the model's pipeline class is not in vllm-omni's registry
    ├── ConfigRejected       a serve configuration that validation refuses
    ├── LaunchError          the server process failed to start (carries a cause)
    └── BenchmarkError       a benchmark that could not run at all
"""

from __future__ import annotations


class OmnituneError(Exception):
    """Base of every anticipated failure; ``fix`` tells the user what to do."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class SettingsError(OmnituneError):
    """A setting (flag or environment variable) is unknown or invalid."""


class WorkspaceError(OmnituneError):
    """The workspace folder or its database cannot be used."""


class NotFoundError(OmnituneError):
    """A named object (server, run, job, model, file) does not exist."""


class InvalidRequestError(OmnituneError):
    """The request is well-typed but cannot be honoured as given."""


class ReadOnlyError(OmnituneError):
    """omnitune runs in read-only mode and the tool would change something."""

    def __init__(self, action: str) -> None:
        super().__init__(
            f"omnitune is in read-only mode, so it will not {action}.",
            "restart omnitune without --read-only (or unset OMNITUNE_READ_ONLY).",
        )


class CapabilityError(OmnituneError):
    """vllm-omni or the model could not be located or analysed."""


class UnregisteredPipeline(CapabilityError):
    """The model names a pipeline class the installed vLLM-Omni does not register: it cannot be served."""


class ConfigRejected(OmnituneError):
    """Validation refused a serve configuration before any process started."""

    def __init__(self, problems: list[str], fixes: list[str]) -> None:
        self.problems = problems
        self.fixes = fixes
        text = "; ".join(problems)
        fix = "; ".join(f for f in fixes if f) or None
        super().__init__(f"configuration rejected: {text}.", fix)


class LaunchError(OmnituneError):
    """The server process failed to start; ``cause`` classifies why."""

    def __init__(self, problem: str, fix: str | None = None, *, cause: str = "unknown",
                 log_tail: str = "") -> None:
        self.cause = cause
        self.log_tail = log_tail
        super().__init__(problem, fix)

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n--- log tail ---\n{self.log_tail}" if self.log_tail else base


class BenchmarkError(OmnituneError):
    """A benchmark could not run at all (as opposed to individual failed requests)."""
