"""The sidecar's config: one YAML file -> a validated, typed `Config`.

    load_config(path) / load_config_text(text)   -> Config, or raise ConfigError
    config_json_schema()                          -> JSON Schema of the file
    effective_defaults()                          -> the defaults, in the file's layout
    config_to_dict(config)                        -> a Config back in the file's layout

Where things are: keys and their rules in `schema.py`, units in `units.py`, the typed
result in `model.py`, the YAML walk in `loader.py`.

The loader and schema are imported on first use: workers only unpickle `model.Config`
and should not pay for YAML and the schema tables in resident memory.
"""
import importlib

_LAZY = {
    "ConfigError": ".errors", "ConfigIssue": ".errors",
    "load_config": ".loader", "load_config_text": ".loader",
    "Config": ".model",
    "config_json_schema": ".schema", "config_to_dict": ".schema", "effective_defaults": ".schema",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
