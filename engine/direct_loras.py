"""LoRAs read straight from their files into the stacks, for the standalone model.

The standalone model process (engine/standalone.py) has no peft: importing it costs
seconds and brings transformers with it. A peft LoRA is two small matrices per
projection plus a scale, so this reads ``adapter_model.safetensors`` and
``adapter_config.json`` itself and gives :class:`~engine.multi_lora.MultiLora` the
same A and B·scaling that peft would (rank and alpha patterns, rsLoRA included).

What the lean forward cannot apply is refused with a clear reason and the fix (the
``transformers`` engine, which serves any peft LoRA): LoRAs that also train other
modules (``modules_to_save``, embeddings, the output layer), LoRA biases, and layouts
for other model families.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from engine.errors import LoraLoadError
from engine.lora_registry import LORA_FILES, LORA_KEY, LoraRegistry

# The projections the lean forward adds LoRA terms to.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ENGINE_FIX = 'fix: set [model] engine = "transformers" (it serves any peft LoRA)'


class DirectLoras(LoraRegistry):
    """:class:`LoraRegistry` for the standalone model: no peft, same surface."""

    transformers = False  # only the lean forward runs

    @property
    def forward_model(self):
        return self.base

    def _check(self, name: str, path: str) -> None:
        super()._check(name, path)
        if not (Path(path) / LORA_FILES[0]).is_file():
            raise LoraLoadError(
                name, path, f"only adapter_model.bin (a pickle) found; {ENGINE_FIX}"
            )
        config = json.loads((Path(path) / "adapter_config.json").read_text())
        unsupported = _unsupported(config)
        if unsupported:
            raise LoraLoadError(name, path, f"{unsupported}; {ENGINE_FIX}")

    def _inject(self, name: str, path: str, peft_name: str) -> None:
        from safetensors import safe_open

        config = json.loads((Path(path) / "adapter_config.json").read_text())
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(Path(path) / LORA_FILES[0]), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                match = LORA_KEY.match(key)
                if match is None:
                    reason = f"it holds {key}, which is not a LoRA projection weight"
                    raise LoraLoadError(name, path, f"{reason}; {ENGINE_FIX}")
                module_path, which = match.groups()
                if module_path.rsplit(".", 1)[-1] not in PROJECTIONS:
                    reason = f"it adapts {module_path}, not a decoder projection"
                    raise LoraLoadError(name, path, f"{reason}; {ENGINE_FIX}")
                pairs.setdefault(module_path, {})[which] = handle.get_tensor(key)
        weights = []
        for module_path, pair in pairs.items():
            if set(pair) != {"A", "B"}:
                reason = f"{module_path} has lora_{''.join(pair)} without its pair"
                raise LoraLoadError(name, path, reason)
            a, b = pair["A"].float(), pair["B"].float()
            if b.shape[1] != a.shape[0]:
                raise LoraLoadError(name, path, f"{module_path}: A and B ranks differ")
            module = self.base.get_submodule(module_path)  # _check_shapes found it
            weights.append((module, a, b * _scaling(config, module_path, a.shape[0])))
        self.multi.add_weights(peft_name, weights)

    def _delete(self, name: str) -> None:
        self.multi.remove(name)


def _unsupported(config: dict[str, Any]) -> str | None:
    """What in ``config`` the lean forward does not apply, or None."""
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        return "it trains biases"
    if config.get("modules_to_save"):
        return f"it also trains {', '.join(config['modules_to_save'])}"
    if config.get("fan_in_fan_out"):
        return "it is laid out for another model family (fan_in_fan_out)"
    for key in ("layer_replication", "trainable_token_indices", "target_parameters"):
        if config.get(key):
            return f"it uses {key}"
    return None


def _pattern_value(patterns: dict[str, Any], module_path: str, default: Any) -> Any:
    """peft's per-module override: the first pattern that matches the path's end."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module_path):
            return value
    return default


def _scaling(config: dict[str, Any], module_path: str, rank: int) -> float:
    """peft's LoRA scale for one module: alpha / r, or alpha / sqrt(r) with rsLoRA."""
    alpha = _pattern_value(config.get("alpha_pattern"), module_path, config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank
