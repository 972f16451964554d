"""Configuration: the schema of a pipeline's TOML file, its loading, TOML output, the reference.

Of the sections only those the side processes read are re-exported here; the rest (SECTIONS,
the defaults ...) are imported from :mod:`shmpipe.config.sections` where needed.
"""

from shmpipe.config import reducers as _reducers  # noqa: F401 - registers [reducers.*]
from shmpipe.config.schema import (
    ConfigError,
    PipelineConfig,
    PluginSpec,
    apply_override,
    build_dataclass,
    coerce,
    load_config,
    parse_value,
    read_toml,
)
from shmpipe.config.sections import MetricsSection, TangoSection
from shmpipe.config.toml_text import to_toml

__all__ = [
    "ConfigError",
    "MetricsSection",
    "PipelineConfig",
    "PluginSpec",
    "TangoSection",
    "apply_override",
    "build_dataclass",
    "coerce",
    "load_config",
    "parse_value",
    "read_toml",
    "to_toml",
]
