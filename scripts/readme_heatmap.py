"""Write docs/heatmap.png, the picture the README shows: `paramctl show --png` of a fixture's embedding.

Run from anywhere: python scripts/readme_heatmap.py   (needs Pillow: pip install -e '.[image]')
It runs the real command, so the image is exactly what a user gets.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "tiny_lm.pt"
NAME = "embed.weight"
OUT = ROOT / "docs" / "heatmap.png"


def main() -> None:
    OUT.parent.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "paramctl", "show", str(FIXTURE.relative_to(ROOT)), NAME, "--png", str(OUT)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise SystemExit(result.returncode)


if __name__ == "__main__":
    main()
