"""omnitune's domain logic: plain functions and pydantic models, no MCP imports.

Each capability lives in a module named after it (``gpus``, ``capabilities``, ``launch``,
``benchmark``, ``compare``, ``tune``); ``server/`` only exposes them over MCP.
"""
