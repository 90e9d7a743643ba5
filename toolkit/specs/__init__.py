"""Experiment specs: what to train, as validated data.

    spec      the Spec dataclass (a family's architecture and a recipe)
    recipe    training recipes as data
    study     the seed study's 17 specs; new: the specs added since
    registry  lookup by name or glob, overrides, run variants, the loaded user specs
    user      user specs as data: TOML spec files, read and written
    models    Keras models built from specs (imports Keras: import lazily)

The registry's API is re-exported here: `from toolkit.specs import get_spec`.
"""

from toolkit.specs.registry import (
    DEFAULT_SPEC,
    SPECS,
    all_specs,
    get_spec,
    match_specs,
    register_spec,
    run_variant,
    study_specs,
    unregister_spec,
    with_overrides,
)
from toolkit.specs.spec import Reported, Spec

__all__ = ["DEFAULT_SPEC", "SPECS", "Reported", "Spec", "all_specs", "get_spec", "match_specs",
           "register_spec", "run_variant", "study_specs", "unregister_spec", "with_overrides"]
