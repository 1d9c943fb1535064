"""omnitune's MCP surface: tool, resource and prompt registrations over the logic in ``tools/``."""
