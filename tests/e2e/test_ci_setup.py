"""CI runs the README's test command, and that command installs what the tests need first."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("Run the whole test suite")
    command = re.search(r"```bash\n(.*?)\n```", readme[start:], flags=re.S).group(1).strip()
    steps = [step.strip() for step in command.split("&&")]
    assert "bash scripts/install-postgres.sh" in steps  # the server the tests need, before they run
    assert steps.index("bash scripts/install-postgres.sh") < steps.index(".venv/bin/python -m pytest -q") == len(steps) - 1
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci


def test_the_postgres_install_script_does_nothing_when_the_server_is_there():
    """The server is installed here (the tests need it), so the script must exit at once, quietly."""
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-postgres.sh")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_missing_server_binaries_fail_with_the_setup_command(monkeypatch):
    """Without PostgreSQL the fixture fails (never skips), saying how to install it."""
    import pytest

    from tests.support import postgres

    monkeypatch.setattr(postgres.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(postgres.shutil, "which", lambda name: None)
    with pytest.raises(postgres.PostgresUnavailable) as missing:
        postgres.TemporaryPostgres()
    assert "bash scripts/install-postgres.sh" in str(missing.value)
    with pytest.raises(pytest.fail.Exception, match="scripts/install-postgres.sh"):
        next(postgres.running_server())  # what the session fixture runs
