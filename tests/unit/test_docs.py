"""The README's configuration table is the user's reference: it must not drift."""

import re
from pathlib import Path

from rabbit_serve.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def documented_settings() -> dict[str, str]:
    rows = re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", README, flags=re.MULTILINE)
    return dict(rows)


def test_every_setting_is_in_the_readme_table_with_its_default():
    documented = documented_settings()
    for name, field in Settings.model_fields.items():
        env = name.upper()
        assert env in documented, f"{env} missing from the README configuration table"
        if name == "model_path":
            assert documented[env] == "models/efficientnet_lite0.onnx"
        else:
            default = field.default
            if default in ((), ""):
                expected = '""'
            elif isinstance(default, tuple):
                expected = ",".join(str(part) for part in default)
            elif isinstance(default, bool):
                expected = str(default).lower()
            else:
                expected = str(default)
            assert documented[env] == expected, f"{env}: README says {documented[env]!r}"


def test_the_table_documents_nothing_that_does_not_exist():
    fields = {name.upper() for name in Settings.model_fields}
    assert set(documented_settings()) <= fields


def test_readme_names_the_two_setup_commands():
    assert "make run" in README and "make test" in README


def test_every_test_docs_security_names_exists():
    # docs/security.md cites a test for each defence: a renamed test must not leave a
    # claim pointing at nothing.
    root = Path(__file__).resolve().parents[2]
    cited = set(re.findall(r"\b(test_[a-z0-9_]+)\b", (root / "docs" / "security.md").read_text()))
    cited = {name for name in cited if not name.endswith("_")}
    sources = "\n".join(p.read_text() for p in (root / "tests").rglob("*.py"))
    defined = set(re.findall(r"def (test_[a-z0-9_]+)", sources))
    modules = {p.stem for p in (root / "tests").rglob("test_*.py")}
    missing = sorted(cited - defined - modules)
    assert cited and not missing, missing
