"""CI must run exactly the README's install and test commands."""

from tests.helpers import ROOT


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    commands = [line.split("# README:")[0].strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if "# README:" in line]
    assert len(commands) == 2
    for command in commands:
        assert command in readme, command
