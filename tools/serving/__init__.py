"""The serving environment (vLLM + vLLM-Omni in its own Python), asked out of process: preflight and flag catalogue."""
