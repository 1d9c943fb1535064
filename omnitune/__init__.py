"""omnitune: make vLLM-Omni diffusion serving fast on your own GPUs, honestly measured.

Installed under this one name. In the repository, ``server/``, ``tools/`` and ``resources/`` stay at the top
(the layout DESIGN.md names); ``omnitune/server``, ``omnitune/tools`` and ``omnitune/resources`` are links to them.
"""
