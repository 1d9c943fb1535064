"""Write the DiT class the analysis found per pipeline (the oracle imports it and reads it by execution).

Usage: .venv/bin/python tests/oracle/hints.py SOURCE_DIR OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from omnitune.tools.capabilities import support_table  # noqa: E402
from omnitune.tools.capabilities.service import analyzer  # noqa: E402
from omnitune.tools.settings import Settings  # noqa: E402


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.model_validate({"workspace": Path(tmp), "vllm_omni_source": src})
        support_table(settings)
        hints = {}
        for row in analyzer(settings).table():
            module = None
            if row.dit_module:
                rel = row.dit_module.rsplit(":", 1)[0]
                module = "vllm_omni." + rel[:-3].replace("/", ".")
            hints[row.pipeline_class] = {"dit_class": row.dit_class, "dit_module": module}
    out.write_text(json.dumps(hints, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
