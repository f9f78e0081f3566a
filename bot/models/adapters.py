"""Characters' LoRA adapters on one shared base model (peft), loaded once each.

Every method here runs on the scheduler's thread, between decode steps, so the model is
never changed under a running forward call. An adapter is named in peft by character and
version; a request holds a reference to the name it started with, so switching a character
to a new version leaves running replies on the old weights until they finish.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from bot.errors import AdapterLoadError
from bot.models.base import BASE_ADAPTER, AdapterSpec
from bot.models.multi_lora import MultiLora

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# A LoRA weight in a saved peft adapter: (module path in the base model, "A" or "B")
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def adapter_version(path: str) -> str:
    """``adapters/aria/v3`` → ``"v3"``: the directory's own name."""
    return Path(path).name or str(path)


@dataclass
class LoadedAdapter:
    character: str
    path: str
    name: str  # the peft adapter name
    version: str
    users: int = 0  # running requests


class AdapterRegistry:
    """Loads, shares, switches and unloads adapters on ``base`` (wrapped in peft lazily)."""

    transformers = True  # the forward may be transformers' (it needs its Cache type)

    def __init__(self, base, dtype) -> None:  # (PreTrainedModel, torch.dtype)
        self.base = base
        self.dtype = dtype
        self.peft = None  # PeftModel, created with the first adapter
        self.loaded: dict[tuple[str, str], LoadedAdapter] = {}
        self.current: dict[str, LoadedAdapter] = {}
        self._serial = 0
        self._row_adapters: list[str] | None = None
        self.multi = MultiLora(dtype)
        self._hooked: set[int] = set()

    @property
    def forward_model(self):
        """The module to call: the base model, with LoRA layers injected once peft exists."""
        return self.base if self.peft is None else self.peft.base_model.model

    @contextlib.contextmanager
    def hooks(self, adapter_names: list[str]):
        """Route each batch row through its own adapter (or none) for one forward call.

        peft's own ``adapter_names`` support registers (and removes) a hook on every LoRA
        layer per call, after walking all modules twice: several ms per decode step. Our
        hooks stay registered and read the names from here.
        """
        self._row_adapters = adapter_names
        self.multi.set_rows(adapter_names)
        try:
            yield
        finally:
            self._row_adapters = None

    def _route(self, module, args, kwargs):
        if self._row_adapters is not None:
            kwargs["adapter_names"] = self._row_adapters
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

    def acquire(self, spec: AdapterSpec | None) -> tuple[str, str | None]:
        """(peft name, version) for a request, loading the adapter if needed."""
        if spec is None:
            return BASE_ADAPTER, None
        entry = self.loaded.get((spec.character, str(spec.path))) or self.load(
            spec.character, str(spec.path)
        )
        entry.users += 1
        return entry.name, entry.version

    def release(self, name: str) -> None:
        """A request on adapter ``name`` finished; drop superseded versions nobody uses."""
        for entry in list(self.loaded.values()):
            if entry.name == name:
                entry.users -= 1
                self._collect(entry)

    def load(self, character: str, path: str) -> LoadedAdapter:
        """Load (or reuse) the adapter at ``path`` and make it ``character``'s current one."""
        key = (character, str(path))
        entry = self.loaded.get(key)
        if entry is None:
            self._check(character, path)
            self._serial += 1
            safe = re.sub(r"[^A-Za-z0-9_]", "_", f"{character}_{adapter_version(path)}")
            name = f"{safe}_{self._serial}"  # unique: peft names cannot be reused mid-flight
            self._inject(character, path, name)
            entry = LoadedAdapter(character, str(path), name, adapter_version(path))
            self.loaded[key] = entry
        previous = self.current.get(character)
        self.current[character] = entry
        if previous is not None and previous is not entry:
            self._collect(previous)
        return entry

    def unload(self, character: str) -> None:
        """Forget ``character``'s adapter; running requests on it finish first."""
        entry = self.current.pop(character, None)
        if entry is not None:
            self._collect(entry)

    def _collect(self, entry: LoadedAdapter) -> None:
        if entry.users > 0 or self.current.get(entry.character) is entry:
            return
        self.loaded.pop((entry.character, entry.path), None)
        self._delete(entry.name)

    def _delete(self, name: str) -> None:
        """Drop a loaded adapter's weights."""
        if self.peft is not None:
            with warnings.catch_warnings():  # "adapter X was active, now Y": meaningless here
                warnings.simplefilter("ignore")
                self.peft.base_model.delete_adapter(name)
        self.multi.remove(name)

    def _check(self, character: str, path: str) -> None:
        """Fail with a clear reason before peft touches the model."""
        directory = Path(path)
        if not directory.is_dir():
            raise AdapterLoadError(character, path, "directory not found")
        config_file = directory / "adapter_config.json"
        if not config_file.is_file():
            raise AdapterLoadError(character, path, "no adapter_config.json (not a peft adapter)")
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError) as exc:
            reason = f"unreadable adapter_config.json: {exc}"
            raise AdapterLoadError(character, path, reason) from exc
        if config.get("peft_type", "LORA") != "LORA":
            raise AdapterLoadError(character, path, f"not a LoRA adapter ({config['peft_type']})")
        if config.get("use_dora"):
            raise AdapterLoadError(character, path, "DoRA adapters cannot be mixed in a batch")
        weights = directory / ADAPTER_WEIGHTS[0]
        if not weights.is_file():
            if (directory / ADAPTER_WEIGHTS[1]).is_file():
                return  # legacy pickle format: shapes are checked by peft itself
            raise AdapterLoadError(character, path, "no adapter_model.safetensors")
        self._check_shapes(character, path, weights)

    def _check_shapes(self, character: str, path: str, weights: Path) -> None:
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
                    raise AdapterLoadError(
                        character, path, f"made for another base model (no module {module_path})"
                    ) from None
                module = getattr(module, "base_layer", module)
                shape = handle.get_slice(key).get_shape()
                expected = module.in_features if which == "A" else module.out_features
                actual = shape[1] if which == "A" else shape[0]
                if actual != expected:
                    raise AdapterLoadError(
                        character,
                        path,
                        f"made for another base model ({module_path} has {expected} features, "
                        f"the adapter {actual})",
                    )

    def _inject(self, character: str, path: str, name: str) -> None:
        """Load the checked adapter at ``path`` under ``name`` and stack its weights."""
        from peft import PeftModel

        try:
            with warnings.catch_warnings():  # transformers deprecations surfacing via peft
                warnings.simplefilter("ignore", FutureWarning)
                if self.peft is None:
                    self.peft = PeftModel.from_pretrained(
                        self.base,
                        path,
                        adapter_name=name,
                        is_trainable=False,
                        autocast_adapter_dtype=False,
                    )
                else:
                    self.peft.load_adapter(
                        path, adapter_name=name, is_trainable=False, autocast_adapter_dtype=False
                    )
        except Exception as exc:
            if self.peft is not None:
                with contextlib.suppress(Exception):
                    self.peft.base_model.delete_adapter(name)
            raise AdapterLoadError(character, path, f"peft could not load it: {exc}") from exc
        self.peft.eval()
        self._hook_new_lora_layers()
        self.multi.add(self.peft, name)
