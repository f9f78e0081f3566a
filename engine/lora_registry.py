"""Named LoRAs on one shared base model (peft), loaded once each.

Every method here runs on the scheduler's thread, between decode steps, so the model is
never changed under a running forward call. A LoRA is named in peft by its name and
version; a request holds a reference to the name it started with, so switching a name
to a new version leaves running replies on the old weights until they finish.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.base import BASE_LORA, LoraSpec, lora_version
from engine.errors import LoraLoadError
from engine.multi_lora import MultiLora

LORA_FILES = ("adapter_model.safetensors", "adapter_model.bin")
# A LoRA weight in a saved peft adapter: (module path in the base model, "A" or "B")
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


@dataclass
class LoadedLora:
    name: str  # the LoraSpec's name
    path: str
    peft_name: str  # unique per load: peft names cannot be reused mid-flight
    version: str
    users: int = 0  # running requests


class LoraRegistry:
    """Loads, shares, switches and unloads LoRAs on ``base`` (wrapped in peft lazily)."""

    transformers = True  # the forward may be transformers' (it needs its Cache type)

    def __init__(self, base, dtype) -> None:  # (PreTrainedModel, torch.dtype)
        self.base = base
        self.dtype = dtype
        self.peft = None  # PeftModel, created with the first LoRA
        self.loaded: dict[tuple[str, str], LoadedLora] = {}
        self.current: dict[str, LoadedLora] = {}
        self._serial = 0
        self._row_loras: list[str] | None = None
        self.multi = MultiLora(dtype)
        self._hooked: set[int] = set()
        # called with a peft name once its weights are gone (the prefix cache drops its
        # keys and values: they were computed with those weights)
        self.on_delete: list[Callable[[str], None]] = []

    @property
    def forward_model(self):
        """The module to call: the base model, with LoRA layers injected once peft exists."""
        return self.base if self.peft is None else self.peft.base_model.model

    @contextlib.contextmanager
    def hooks(self, adapter_names: list[str]):
        """Route each batch row through its own LoRA (or none) for one forward call.

        peft's own ``adapter_names`` support registers (and removes) a hook on every LoRA
        layer per call, after walking all modules twice: several ms per decode step. Our
        hooks stay registered and read the names from here.
        """
        self._row_loras = adapter_names
        self.multi.set_rows(adapter_names)
        try:
            yield
        finally:
            self._row_loras = None

    def _route(self, module, args, kwargs):
        if self._row_loras is not None:
            kwargs["adapter_names"] = self._row_loras
        return args, kwargs

    def _hook_new_lora_layers(self) -> None:
        from peft.tuners.lora import Linear as LoraLinear
        from peft.tuners.lora import LoraLayer

        for module in self.peft.modules():
            if isinstance(module, LoraLinear):
                continue  # served by MultiLora's stacked weights instead
            if isinstance(module, LoraLayer) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._route, with_kwargs=True)
                self._hooked.add(id(module))

    def acquire(self, spec: LoraSpec | None) -> tuple[str, str | None]:
        """(peft name, version) for a request, loading the LoRA if needed."""
        if spec is None:
            return BASE_LORA, None
        entry = self.loaded.get((spec.name, str(spec.path))) or self.load(spec.name, str(spec.path))
        entry.users += 1
        return entry.peft_name, entry.version

    def release(self, peft_name: str) -> None:
        """A request on ``peft_name`` finished; drop superseded versions nobody uses."""
        for entry in list(self.loaded.values()):
            if entry.peft_name == peft_name:
                entry.users -= 1
                self._collect(entry)

    def load(self, name: str, path: str) -> LoadedLora:
        """Load (or reuse) the LoRA at ``path`` and make it ``name``'s current one."""
        key = (name, str(path))
        entry = self.loaded.get(key)
        if entry is None:
            self._check(name, path)
            self._serial += 1
            safe = re.sub(r"[^A-Za-z0-9_]", "_", f"{name}_{lora_version(path)}")
            peft_name = f"{safe}_{self._serial}"
            self._inject(name, path, peft_name)
            entry = LoadedLora(name, str(path), peft_name, lora_version(path))
            self.loaded[key] = entry
        previous = self.current.get(name)
        self.current[name] = entry
        if previous is not None and previous is not entry:
            self._collect(previous)
        return entry

    def unload(self, name: str) -> None:
        """Forget ``name``'s LoRA; running requests on it finish first."""
        entry = self.current.pop(name, None)
        if entry is not None:
            self._collect(entry)

    def _collect(self, entry: LoadedLora) -> None:
        if entry.users > 0 or self.current.get(entry.name) is entry:
            return
        self.loaded.pop((entry.name, entry.path), None)
        self._delete(entry.peft_name)
        for listener in self.on_delete:
            listener(entry.peft_name)

    def _delete(self, peft_name: str) -> None:
        """Drop a loaded LoRA's weights."""
        if self.peft is not None:
            with warnings.catch_warnings():  # "adapter X was active, now Y": meaningless here
                warnings.simplefilter("ignore")
                self.peft.base_model.delete_adapter(peft_name)
        self.multi.remove(peft_name)

    def _check(self, name: str, path: str) -> None:
        """Fail with a clear reason before peft touches the model."""
        directory = Path(path)
        if not directory.is_dir():
            raise LoraLoadError(name, path, "directory not found")
        config_file = directory / "adapter_config.json"
        if not config_file.is_file():
            raise LoraLoadError(name, path, "no adapter_config.json (not a peft adapter)")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            reason = f"unreadable adapter_config.json: {exc}"
            raise LoraLoadError(name, path, reason) from exc
        if config.get("peft_type", "LORA") != "LORA":
            raise LoraLoadError(name, path, f"not a LoRA ({config['peft_type']})")
        if config.get("use_dora"):
            raise LoraLoadError(name, path, "DoRA LoRAs cannot be mixed in a batch")
        weights = directory / LORA_FILES[0]
        if not weights.is_file():
            if (directory / LORA_FILES[1]).is_file():
                return  # legacy pickle format: shapes are checked by peft itself
            raise LoraLoadError(name, path, "no adapter_model.safetensors")
        self._check_shapes(name, path, weights)

    def _check_shapes(self, name: str, path: str, weights: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                match = LORA_KEY.match(key)
                if not match:
                    continue
                module_path, which = match.groups()
                try:
                    module = self.forward_model.get_submodule(module_path)
                except AttributeError:
                    raise LoraLoadError(
                        name, path, f"made for another base model (no module {module_path})"
                    ) from None
                module = getattr(module, "base_layer", module)
                shape = handle.get_slice(key).get_shape()
                expected = module.in_features if which == "A" else module.out_features
                actual = shape[1] if which == "A" else shape[0]
                if actual != expected:
                    raise LoraLoadError(
                        name,
                        path,
                        f"made for another base model ({module_path} has {expected} features, "
                        f"the LoRA {actual})",
                    )

    def _inject(self, name: str, path: str, peft_name: str) -> None:
        """Load the checked LoRA at ``path`` as ``peft_name`` and stack its weights."""
        from peft import PeftModel

        try:
            with warnings.catch_warnings():  # transformers deprecations surfacing via peft
                warnings.simplefilter("ignore", FutureWarning)
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.base,
                        path,
                        adapter_name=peft_name,
                        is_trainable=False,
                        autocast_adapter_dtype=False,
                    )
                else:
                    self.peft.load_adapter(
                        path,
                        adapter_name=peft_name,
                        is_trainable=False,
                        autocast_adapter_dtype=False,
                    )
        except Exception as exc:
            if self.peft is not None:
                with contextlib.suppress(Exception):
                    self.peft.base_model.delete_adapter(peft_name)
            raise LoraLoadError(name, path, f"peft could not load it: {exc}") from exc
        self.peft.eval()
        self._hook_new_lora_layers()
        self.multi.add(self.peft, peft_name)
