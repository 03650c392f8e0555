"""The sidecar's config: one YAML file -> a validated, typed `Config`.

    load_config(path) / load_config_text(text)   -> Config, or raise ConfigError
    config_json_schema()                          -> JSON Schema of the file
    effective_defaults()                          -> the defaults, in the file's layout
    config_to_dict(config)                        -> a Config back in the file's layout

Where things are: keys and their rules in `schema.py`, units in `units.py`, the typed
result in `model.py`, the YAML walk in `loader.py`.
"""
from .errors import ConfigError, ConfigIssue
from .loader import load_config, load_config_text
from .model import Config
from .schema import config_json_schema, config_to_dict, effective_defaults

__all__ = [
    "Config", "ConfigError", "ConfigIssue", "load_config", "load_config_text",
    "config_json_schema", "config_to_dict", "effective_defaults",
]
