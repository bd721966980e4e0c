"""The typed model of `params.yaml` (`params`: one pydantic model per params group, `data`: the dataset sources'
groups) and how it is read (`loading`: presets, --set assignments, one validation with one-line errors)."""

from seg4diff.config.analysis import *  # every params group, as `seg4diff.config.<Group>`
from seg4diff.config.checks import check_stage
from seg4diff.config.data import *
from seg4diff.config.loading import (
    ParamsError,
    deep_merge,
    load_params,
    merged_yaml,
    parse_assignments,
    parse_params,
    preset_names,
    read_preset,
)
from seg4diff.config.params import *
