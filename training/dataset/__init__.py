"""A character's base dataset under ``<datasets_dir>/<character>/``: TRL-ready JSONL
(``train.jsonl``, and ``val.jsonl`` after a split) and a ``manifest.json`` saying where it
came from — imported, cleaned, split and summarised by ``charbot data …``."""

from training.dataset.files import DataError, DatasetFiles

__all__ = ["DataError", "DatasetFiles"]
