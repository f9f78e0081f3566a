"""The composition root: the ``charbot`` command, the wiring of store, model, core and
platform adapters, and the run loop. The only package that knows every layer."""
