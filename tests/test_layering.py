"""The package's layering is a contract: import-linter checks it ([tool.importlinter] in pyproject.toml), and the
request type imports no torch (so wire adapters, the CLI's flag checks and the queue need no model stack)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_layering_contract_holds():
    lint = Path(sys.executable).parent / "lint-imports"
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_importing_the_request_type_loads_no_torch():
    code = (
        "import sys\nimport daguerre.request, daguerre.engine.plan, daguerre.jobs.spec, daguerre.api.schema\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
