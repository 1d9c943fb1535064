"""Data and renderers behind omnitune's MCP resources (support tables, recipes, the decision flowchart)."""
