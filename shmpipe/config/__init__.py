"""Configuration: the schema of a pipeline's TOML file, its loading, TOML output, the reference."""

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
from shmpipe.config.sections import (
    DEFAULT_KERNELS,
    DEFAULT_SINKS,
    DEFAULT_SOURCE,
    PLUGIN_SECTIONS,
    SECTIONS,
    MetricsSection,
    RingSection,
    RunSection,
    TangoSection,
    ViewSection,
)
from shmpipe.config.toml_text import to_toml

__all__ = [
    "DEFAULT_KERNELS",
    "DEFAULT_SINKS",
    "DEFAULT_SOURCE",
    "PLUGIN_SECTIONS",
    "SECTIONS",
    "ConfigError",
    "MetricsSection",
    "PipelineConfig",
    "PluginSpec",
    "RingSection",
    "RunSection",
    "TangoSection",
    "ViewSection",
    "apply_override",
    "build_dataclass",
    "coerce",
    "load_config",
    "parse_value",
    "read_toml",
    "to_toml",
]
