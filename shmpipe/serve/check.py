"""``shmpipe serve --check``: every recipe's pipeline loaded as the service would start it,
before anything starts."""

from __future__ import annotations

from shmpipe.config import ConfigError, load_config
from shmpipe.serve.config import ServiceConfig
from shmpipe.serve.plan import RunPlan, child_overrides


def check_recipes(service: ServiceConfig) -> list[str]:
    """Load every recipe's pipeline as the service would start it; one line per recipe.

    Raises
    ------
    ConfigError
        The first recipe whose pipeline configuration is wrong, naming the recipe.
    """
    lines = []
    for i, recipe in enumerate(service.recipes):
        plan = RunPlan(recipe.name, "beamtime", "data_source", 0, [], {}, "check", "")
        sets = child_overrides(service, recipe, plan, load_config(recipe.config))
        try:
            cfg = load_config(recipe.config, sets)
        except ConfigError as exc:
            raise ConfigError(
                f"recipe {recipe.name!r}: {exc}", f"recipes[{i}].set", service.path
            ) from None
        if cfg.source.kind != "asapo":
            raise ConfigError(
                f"recipe {recipe.name!r}: its source is {cfg.source.kind!r}; the service "
                'follows ASAPO beamtimes (source.kind = "asapo")',
                f"recipes[{i}].config",
                service.path,
            )
        if cfg.run.workers > service.workers:
            raise ConfigError(
                f"recipe {recipe.name!r} needs {cfg.run.workers} workers, the node has "
                f"{service.workers} (serve.max_workers)",
                f"recipes[{i}].set",
                service.path,
            )
        lines.append(
            f"recipe {recipe.name}: {recipe.config}, {cfg.run.workers} workers, "
            f"chain {' -> '.join(k.name for k in cfg.kernels)}"
        )
    return lines
