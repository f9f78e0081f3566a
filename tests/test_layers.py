"""tools/layers.py, the import rules `make lint` checks, on small trees written here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("layers", ROOT / "tools" / "layers.py")
assert spec is not None and spec.loader is not None
layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(layers)


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in layers.PACKAGES:
        (root / package).mkdir(exist_ok=True)
        (root / package / "__init__.py").touch()
    return root


def test_a_clean_tree_has_no_problems(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "charbot/cli.py": "from adapters import console\nfrom training import train\n",
            "adapters/console.py": "from bot.core import Core\n",
            "training/train.py": "from engine import create_model\nfrom storage import store\n",
            "bot/core.py": "from engine.errors import ModelError\nfrom storage.store import S\n",
            "storage/store.py": "import sqlalchemy\n",
            "engine/local.py": "from engine.base import X\n",
            "engine/base.py": "X = 1\n",
        },
    )
    assert layers.problems(root) == []


def test_upward_imports_are_named_with_their_line(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "bot/core.py": "import os\n\ndef f():\n    from adapters.console import C\n",
            "storage/store.py": "from bot.errors import E\n",
            "engine/base.py": "from bot.config import ModelSettings\n",
            "adapters/console.py": "",
            "bot/errors.py": "",
            "bot/config.py": "",
        },
    )
    found = layers.problems(root)
    assert "bot/core.py:4: bot must not import adapters (adapters.console)" in found
    assert "storage/store.py:1: storage must not import bot (bot.errors)" in found
    assert "engine/base.py:1: engine must not import bot (bot.config)" in found


def test_the_engine_is_used_through_its_face(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "bot/core.py": "from engine.scheduler import Scheduler\nfrom engine import ChatModel\n",
            "engine/scheduler.py": "",
        },
    )
    (problem,) = layers.problems(root)
    assert problem.startswith("bot/core.py:1: engine.scheduler is inside the engine")


def test_circles_count_type_checking_imports(tmp_path: Path) -> None:
    late = "import typing\nif typing.TYPE_CHECKING:\n    from adapters.a import X\n"
    root = tree(
        tmp_path,
        {
            "adapters/a.py": "from adapters import b\n",
            "adapters/b.py": late,
        },
    )
    assert layers.problems(root) == ["import circle: adapters.a → adapters.b → adapters.a"]
