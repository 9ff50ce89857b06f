"""docs/adding-a-method.md stays true: its method, saved as a module of mintclip.adapt, registers and
passes the test the page shows beside it."""

import importlib.util
import re
import sys
from pathlib import Path

from mintclip.adapt import available_methods, base

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def load_module(name: str, source: str, folder: Path):
    path = folder / f"{name.rpartition('.')[2]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_example_method_registers_and_passes_its_test(tmp_path):
    method_source, test_source = python_blocks(PAGE.read_text())
    try:
        load_module("mintclip.adapt.meanviews", method_source, tmp_path)
        assert available_methods()["meanviews"].source.startswith("kdiAAA/TDA")
        tests = load_module("test_meanviews_from_the_docs", test_source, tmp_path)
        names = [name for name in vars(tests) if name.startswith("test_")]
        assert len(names) == 2
        for name in names:
            getattr(tests, name)()
    finally:
        base._REGISTRY.pop("meanviews", None)
        sys.modules.pop("mintclip.adapt.meanviews", None)
        sys.modules.pop("test_meanviews_from_the_docs", None)
